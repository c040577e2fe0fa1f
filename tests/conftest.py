"""Fixtures shared by the test modules."""

import logging

import pytest


@pytest.fixture
def ray_loopback(monkeypatch):
    """Environment of a test that starts Ray: set before any Ray process starts, so every node
    listens on 127.0.0.1 only and a local run skips token auth; no tracking URI leaks in."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (127.0.0.1, 2 CPUs, with the dashboard Train V2 needs) for a module's
    studies: ``run_study`` joins a running Ray instead of starting its own, as it does for a
    user's notebook, which saves a Ray start and shutdown per study."""
    import ray

    from occstudy.study.environment import configure_environment

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        configure_environment(local=True)
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
        try:
            yield
        finally:
            ray.shutdown()
