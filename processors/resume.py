"""Where the built-in jobs keep their ``--resume`` journals when no local output folder holds
one (``csv stats``, and outputs at a URL): one file per job under a cache folder."""

from __future__ import annotations

import json
import os
from hashlib import blake2b
from pathlib import Path
from typing import Any

__all__ = ["cache_journal"]


def cache_journal(command: str, job: dict[str, Any]) -> Path:
    """The journal of ``command``'s ``job`` (its inputs and settings, as JSON): under
    ``$BATCHCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/batchcore``, else ``~/.cache/batchcore``,
    in ``checkpoints/COMMAND-HASH.sqlite``, so another job (or settings) gets another file."""
    root = os.environ.get("BATCHCORE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "batchcore"
    )
    text = json.dumps(job, sort_keys=True, default=str)
    digest = blake2b(text.encode(), digest_size=10).hexdigest()
    return Path(root) / "checkpoints" / f"{command}-{digest}.sqlite"
