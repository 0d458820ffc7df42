"""Fixtures shared by the interop tests: the nightshift binary and the S3 test server."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nightshift_bin() -> Path:
    """Return the nightshift binary named by NIGHTSHIFT_BIN (scripts/test sets it)."""
    value = os.environ.get("NIGHTSHIFT_BIN")
    if not value:
        pytest.fail("NIGHTSHIFT_BIN is not set; run the tests through scripts/test")
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"NIGHTSHIFT_BIN={value} is not an executable file; run cargo build first")
    return path


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """Return the S3 test server's URL, or skip when no server was started."""
    endpoint = os.environ.get("NIGHTSHIFT_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip(
            "NIGHTSHIFT_TEST_S3_ENDPOINT is not set, so there is no S3 test server; "
            "scripts/test starts one and sets it"
        )
    return endpoint


@pytest.fixture(scope="session")
def s3_bucket() -> str:
    return os.environ.get("NIGHTSHIFT_TEST_S3_BUCKET", "nightshift-test")
