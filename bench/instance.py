"""One Cabinet instance for a benchmark: its own folder, config, database and process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
SERVER_CPU = "0"
LOAD_CPU = "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: str, argv: list[str]) -> list[str]:
    """``argv`` run on one core (taskset), so server and load never share one."""
    if os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        return ["taskset", "-c", cpu, *argv]
    return argv


def wait_until(predicate: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not happen within {timeout:.0f} s\n{tail}")


class Instance:
    """A data folder with a config file; ``start()`` runs `cabinet serve` pinned to the server core."""

    def __init__(self, root: Path, database_url: str = "", relay_port: int | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.smtp_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.domain = "cabinet.bench.example"
        self.log = root / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        mail = f'transport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {relay_port}\nrelay_tls = "none"\n' if relay_port else ""
        database = f'database_url = "{database_url}"\n' if database_url else ""
        self.config = root / "cabinet.toml"
        self.config.write_text(
            f'[storage]\ndata_dir = "data"\n{database}'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\npublic_url = "{self.base_url}"\n'
            f'[smtp]\nlisten = "127.0.0.1:{self.smtp_port}"\ndomain = "{self.domain}"\n'
            f"[mail]\n{mail}"
            # Its own port: two benches (or a bench beside a test run) must not fight over 9108.
            f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
            '[general]\nlog_level = "WARNING"\n',
            encoding="utf-8",
        )

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "cabinet"), "--config", str(self.config), *args], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"cabinet {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            pinned(SERVER_CPU, [str(BIN / "cabinet"), "--config", str(self.config), "serve"]),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        wait_until(lambda: httpx.get(f"{self.base_url}/healthz", timeout=5).status_code == 200,
                   120, "cabinet serve answering /healthz", self.log)

    def rss_mb(self) -> float:
        """Resident memory of the serve process (its child under taskset is the same pid: exec)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


class Ceiling:
    """One of ``bench.ceilings`` (or of ``bench.floors``: ``module``) running pinned to the server core."""

    def __init__(self, root: Path, *args: str, cpu: str = SERVER_CPU, module: str = "bench.ceilings") -> None:
        self.port = free_port()
        self.log = root / f"{'ceiling' if module == 'bench.ceilings' else 'floor'}-{args[0]}.log"
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            pinned(cpu, [sys.executable, "-m", module, args[0], str(self.port), *args[1:]]),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                return True

        wait_until(listening, 60, f"ceiling {args[0]} listening", self.log)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
