"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture
def ray_loopback(monkeypatch):
    """Environment of a test that starts Ray: set before any Ray process starts, so every node
    listens on 127.0.0.1 only and a local run skips token auth; no tracking URI leaks in."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
