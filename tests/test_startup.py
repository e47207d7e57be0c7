"""Start-up failures of the real `cabinet serve`: one clear line on stderr and exit 78."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, Env

# Only a guard against a hung child (the test then fails and shows its output), never a timing assertion.
HANG_GUARD = 300


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=HANG_GUARD, env={**os.environ},
    )


def explain(process: subprocess.CompletedProcess[str]) -> str:
    return f"exit {process.returncode}\nstderr:\n{process.stderr}\nstdout:\n{process.stdout}"


@pytest.fixture
def occupied() -> Iterator[socket.socket]:
    sockets: list[socket.socket] = []

    def occupy(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        sockets.append(sock)
        return sock

    yield occupy  # type: ignore[misc]
    for sock in sockets:
        sock.close()


@pytest.mark.parametrize("which", ["http", "smtp"])
def test_a_port_in_use_is_one_line_naming_the_port_and_its_key(env: Env, cli: Cli, occupied, which: str) -> None:
    port = env.http_port if which == "http" else env.smtp_port
    occupied(port)
    process = serve(env.config_path)
    assert process.returncode == 78, explain(process)
    assert process.stderr.splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (set by [{which}] listen): address already in use"
    ], explain(process)
    assert "Traceback" not in process.stdout, explain(process)


def test_a_data_folder_that_is_not_a_folder_is_one_line(env: Env, cli: Cli, tmp_path: Path) -> None:
    # (Permission bits would not stop root, which CI may run as; a file in the folder's place stops everyone.)
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    config = tmp_path / "elsewhere.toml"
    config.write_text(env.config_path.read_text().replace('data_dir = "data"', f'data_dir = "{not_a_folder}"'))
    process = serve(config)
    assert process.returncode == 78, explain(process)
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and str(not_a_folder) in lines[0] and "Not a directory" in lines[0], explain(process)


def test_an_invalid_configuration_stops_serve_in_one_line(env: Env, cli: Cli) -> None:
    with env.config_path.open("a") as config:
        config.write("\n[invitations]\nttl_dayz = 3\n")
    process = serve(env.config_path)
    assert process.returncode == 78, explain(process)
    assert len(process.stderr.splitlines()) == 1, explain(process)
    assert "unknown key [invitations] ttl_dayz; did you mean ttl_days?" in process.stderr, explain(process)
