"""Shared fixtures. Prefect runs against a throwaway local API (prefect_test_harness)."""

from __future__ import annotations

import os

# Before any Prefect import: local, quiet, no telemetry. Backoff short so fault tests are quick.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["RAPPORT_RETRY_BASE_S"] = "0.02"
os.environ["RAPPORT_GMAIL_QUOTA"] = "0"  # quota is exercised by its own tests
# Every incremental publish keeps a standby, however small its file: the invariants run
# through it (tests/warehouse/test_standby.py checks the size rule itself).
os.environ["RAPPORT_STANDBY_MIN_BYTES"] = "0"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
