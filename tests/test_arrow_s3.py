"""Which storage options Arrow's S3 client reads with (``processors/arrow_s3.py``): exactly
s3fs's server, credentials, region and timeouts, or none at all (s3fs reads, as before)."""

from __future__ import annotations

from typing import Any

import pytest

from batchcore.processors.arrow_s3 import SWITCH, arrow_options

KEYS = {"key": "AKIA0", "secret": "s3cr3t"}


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_CA_BUNDLE",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        SWITCH,
    ):
        monkeypatch.delenv(name, raising=False)


def test_keys_endpoint_region_and_timeouts_map_one_to_one() -> None:
    got = arrow_options(
        {
            **KEYS,
            "token": "t0k",
            "endpoint_url": "http://127.0.0.1:9000",
            "client_kwargs": {"region_name": "eu-west-3"},
            "config_kwargs": {"connect_timeout": 2, "read_timeout": 7},
            "skip_instance_cache": True,
        }
    )
    assert got == {
        "access_key": "AKIA0",
        "secret_key": "s3cr3t",
        "session_token": "t0k",
        "scheme": "http",
        "endpoint_override": "127.0.0.1:9000",
        "region": "eu-west-3",
        "connect_timeout": 2.0,
        "request_timeout": 7.0,
        "attempts": 1,  # ``retrying`` retries, as with s3fs
    }


def test_defaults_follow_s3fs_and_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    got = arrow_options({**KEYS, "endpoint_url": "https://minio.example:9000"})
    assert got is not None
    assert (got["scheme"], got["region"]) == ("https", "us-east-1")  # botocore's for s3
    assert (got["connect_timeout"], got["request_timeout"]) == (5.0, 15.0)  # S3_DEFAULTS
    assert "region" not in (arrow_options(KEYS) or {})  # AWS itself: the bucket's, asked once
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert (arrow_options(KEYS) or {})["region"] == "ap-south-1"
    assert arrow_options({"anon": True}) == {
        "anonymous": True,
        "region": "ap-south-1",
        "connect_timeout": 5.0,
        "request_timeout": 15.0,
        "attempts": 1,
    }
    retries = {"config_kwargs": {"retries": {"max_attempts": 2}}}
    assert (arrow_options({**KEYS, **retries}) or {})["attempts"] == 3  # botocore: 2 retries


def test_credentials_from_the_environment_only_as_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in the environment are read alike by both clients; anything else botocore finds
    (a profile, SSO, a role, instance metadata) is left to it."""
    assert arrow_options({"endpoint_url": "http://h:1"}) is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    got = arrow_options({"endpoint_url": "http://h:1"})
    assert got is not None and "access_key" not in got  # Arrow reads the same variables
    assert arrow_options({"key": "AKIA0"}) is None  # a key without its secret


@pytest.mark.parametrize(
    "options",
    [
        {**KEYS, "profile": "work"},
        {**KEYS, "requester_pays": True},
        {**KEYS, "version_aware": True},
        {**KEYS, "s3_additional_kwargs": {"SSECustomerKey": "x"}},
        {**KEYS, "client_kwargs": {"verify": False}},
        {**KEYS, "config_kwargs": {"signature_version": "s3"}},
        {**KEYS, "config_kwargs": {"s3": {"addressing_style": "virtual"}}},
        {**KEYS, "endpoint_url": "http://h:1/some/path"},
        {**KEYS, "local_expiry_check": True},
    ],
)
def test_options_without_an_exact_equivalent_leave_the_reads_to_s3fs(
    options: dict[str, Any],
) -> None:
    assert arrow_options(options) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (SWITCH, "0"),
        ("AWS_ENDPOINT_URL", "http://elsewhere:1"),
        ("AWS_PROFILE", "work"),
        ("HTTPS_PROXY", "http://proxy:3128"),
    ],
)
def test_an_environment_botocore_reads_differently_leaves_the_reads_to_s3fs(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    assert arrow_options(KEYS) is not None
    monkeypatch.setenv(name, value)
    assert arrow_options(KEYS) is None


def test_a_ca_bundle_is_arrows_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca.pem")
    assert (arrow_options(KEYS) or {})["tls_ca_file_path"] == "/etc/ssl/certs/ca.pem"
    plain = arrow_options({**KEYS, "endpoint_url": "http://h:1"}) or {}
    assert "tls_ca_file_path" not in plain


def test_a_pyarrow_without_its_s3_client_leaves_the_reads_to_s3fs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchcore.processors import arrow_s3

    assert arrow_options(KEYS) is not None
    arrow_s3._arrow_has_s3.cache_clear()
    monkeypatch.setattr(arrow_s3, "ARROW_S3_MODULE", "_no_s3fs")  # a build without S3 lacks it
    try:
        assert arrow_options(KEYS) is None
    finally:
        arrow_s3._arrow_has_s3.cache_clear()
