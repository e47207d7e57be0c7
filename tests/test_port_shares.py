"""The loopback ports tests listen on: every run going at once, and every worker of each, has its own."""

from __future__ import annotations

import pytest

from tests.conftest import _test_port_range


def _ports(monkeypatch: pytest.MonkeyPatch, share: str, worker: int, workers: int) -> range:
    monkeypatch.setenv("CABINET_TEST_PORT_SHARE", share)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
    return _test_port_range()


def test_scripts_test_sh_runs_never_draw_from_each_others_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's run (0/2) and PostgreSQL's (1/2) go at once, each over two workers: four disjoint slices."""
    slices = [_ports(monkeypatch, share, worker, 2) for share in ("0/2", "1/2") for worker in (0, 1)]
    assert all(len(ports) >= 100 for ports in slices), slices
    for n, one in enumerate(slices):
        for other in slices[n + 1:]:
            assert not set(one) & set(other), (one, other)


@pytest.mark.parametrize("share", ["2/2", "-1/2", "1", "a/b"])
def test_a_malformed_share_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, share: str) -> None:
    with pytest.raises(pytest.UsageError, match="CABINET_TEST_PORT_SHARE"):
        _ports(monkeypatch, share, 0, 1)
