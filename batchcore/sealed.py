"""``Secret``: a value (a password, an access key) that workers may use but nothing may show.

A secret is masked wherever Python turns it into text (``repr``, ``str``, f-strings, logging,
tracebacks, JSON through ``default=str``), and when pickled it is sealed: encrypted and
authenticated with a key that exists only in this process and the processes it starts (the key
travels in their environment, ``BATCHCORE_SEAL_KEY``). So a pickled task, a Dask task graph or a
spilled result holds no secret in clear, and only batchcore's own workers (process pools, a
``LocalCluster`` batchcore or the caller started here) can unseal it. A cluster started elsewhere
cannot: its workers need credentials of their own (environment or config files), which is also
the better practice.

The seal is HMAC-SHA256 in counter mode (a keystream XORed in) with an HMAC tag over the nonce
and ciphertext: the standard library has no cipher, and a PRF in counter mode with a fresh random
nonce is a sound one; the tag refuses a blob sealed under another key instead of returning noise.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Any

__all__ = ["KEY_ENV", "Secret", "SealError", "reveal"]

KEY_ENV = "BATCHCORE_SEAL_KEY"
MASK = "***"
_NONCE = 16
_TAG = 16


class SealError(RuntimeError):
    """A sealed secret reached a process that does not hold the key it was sealed with."""


def _key() -> bytes:
    """This process tree's sealing key, made on first use and put in the environment so that
    every process started from here on (pool workers, a zygote, cluster workers) inherits it."""
    value = os.environ.get(KEY_ENV)
    if not value:
        value = secrets.token_hex(32)
        os.environ[KEY_ENV] = value
    return bytes.fromhex(value)


_key()  # now, so that pools and clusters started later all inherit it


def _keystream(key: bytes, nonce: bytes, size: int) -> bytes:
    blocks = (size + 31) // 32
    stream = b"".join(
        hmac.digest(key, nonce + counter.to_bytes(8, "big"), hashlib.sha256)
        for counter in range(blocks)
    )
    return stream[:size]


def seal(data: bytes) -> bytes:
    """``data`` encrypted and authenticated under this process tree's key."""
    key = _key()
    nonce = secrets.token_bytes(_NONCE)
    cipher = bytes(a ^ b for a, b in zip(data, _keystream(key, nonce, len(data)), strict=True))
    tag = hmac.digest(key, b"tag" + nonce + cipher, hashlib.sha256)[:_TAG]
    return nonce + tag + cipher


def unseal(blob: bytes) -> bytes:
    """The data ``seal`` sealed; ``SealError`` when this process holds another key."""
    key = _key()
    nonce, tag, cipher = blob[:_NONCE], blob[_NONCE : _NONCE + _TAG], blob[_NONCE + _TAG :]
    expected = hmac.digest(key, b"tag" + nonce + cipher, hashlib.sha256)[:_TAG]
    if not hmac.compare_digest(tag, expected):
        raise SealError(
            "a secret was sent to a process that batchcore did not start (a Dask cluster started "
            "elsewhere?), which cannot unseal it; give those workers their own credentials "
            "(environment variables or config files) instead of passing secrets in options"
        )
    return bytes(a ^ b for a, b in zip(cipher, _keystream(key, nonce, len(cipher)), strict=True))


def _unsealed(blob: bytes) -> Secret:
    return Secret(unseal(blob).decode("utf-8"))


class Secret:
    """A text value shown as ``***`` and pickled sealed; ``reveal()`` (or ``reveal(value)``) gives
    it back where it is needed, at the last moment."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds text, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value itself: pass it straight to the library that needs it, never to text."""
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, hashlib.sha256(self._value.encode()).digest()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unsealed, (seal(self._value.encode("utf-8")),))


def reveal(value: Any) -> Any:
    """``value`` with every ``Secret`` in it (nested in dicts, lists and tuples) revealed."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(reveal(item) for item in value)
    return value
