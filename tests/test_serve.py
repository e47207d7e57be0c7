"""`cabinet serve` as a real process: it answers, it refuses foreign mail, it stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from typing import Iterator

import pytest

from tests.conftest import START_TIMEOUT, Cli, Env, ServeProcess, wait_until

# systemd's TimeoutStopSec in deploy/cabinet.service: a stop that takes longer is killed there.
STOP_WITHIN = 20.0


@pytest.fixture
def daemon(env: Env, cli: Cli) -> Iterator[ServeProcess]:
    process = ServeProcess(env).start()
    yield process
    process.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(daemon: ServeProcess, signum: int) -> None:
    daemon.send_signal(signum)
    assert daemon.wait(STOP_WITHIN) == 0, daemon.tail()
    output = daemon.output()
    assert "Cabinet is serving" in output and "Cabinet stopped" in output, daemon.tail()


def test_serve_freezes_its_start_up_heap_and_again_after_a_reload(daemon: ServeProcess) -> None:
    """The count logged is the interpreter's own (``gc.get_freeze_count()`` in the serving process)."""
    frozen = wait_until(lambda: re.search(r"start-up heap frozen: (\d+) objects", daemon.output()),
                        what="the start-up freeze to be logged", detail=daemon.tail)
    assert int(frozen.group(1)) > 10_000, daemon.tail()  # the app, the templates, SQLAlchemy's metadata
    daemon.send_signal(signal.SIGHUP)
    again = wait_until(lambda: re.search(r"heap frozen again after the reload: (\d+) objects", daemon.output()),
                       what="the freeze after SIGHUP to be logged", detail=daemon.tail)
    assert int(again.group(1)) > 10_000, daemon.tail()


def test_serve_refuses_to_start_without_init(tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[storage]\ndata_dir = 'nothing-here'\n")
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), "serve"],
                            capture_output=True, text=True, timeout=START_TIMEOUT)
    assert result.returncode == 78 and "cabinet init" in result.stderr, result.stdout + result.stderr
