"""Fixtures of the extraction tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def cluster_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What a run started of its workers (the fork server, the cluster): stand-ins note it, start nothing.

    For the checks that must stop a run before any process starts.
    """
    import mt2kd.extract._cluster as cluster

    started: list[str] = []
    monkeypatch.setattr(cluster, "prestart_local_workers", lambda config: started.append("fork server"))
    monkeypatch.setattr(cluster, "open_client", lambda config: started.append("cluster"))
    return started
