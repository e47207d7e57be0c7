"""`cabinet serve` as a real process: it answers, it refuses foreign mail, it stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import Cli, Env


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"cabinet serve exited early:\n{process.stdout.read().decode()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("cabinet serve did not come up")


@pytest.fixture
def daemon(env: Env, cli: Cli):
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "--config", str(env.config_path), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    wait_until_up(f"{env.base_url}/healthz", process)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(daemon: subprocess.Popen[bytes], signum: int) -> None:
    started = time.monotonic()
    daemon.send_signal(signum)
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - started < 6
    output = daemon.stdout.read().decode()
    assert "Cabinet is serving" in output and "Cabinet stopped" in output


def test_serve_refuses_to_start_without_init(tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[storage]\ndata_dir = 'nothing-here'\n")
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), "serve"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78 and "cabinet init" in result.stderr
