"""A server's instructions counted by callgrind while a load runs against it: what ``bench.callgrind_get``,
``bench.callgrind_accept`` and ``bench.callgrind_inbound`` share (each says what it serves and sends)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def collected(argv: list[str], out: Path, ready: Callable[[], bool], drive: Callable[[], None],
              env: dict[str, str] | None = None, cwd: Path | None = None, simulate: bool = False) -> int:
    """Instructions of ``argv`` under callgrind (its file ``out``, its output ``out``.log): started, waited for
    until ``ready()`` (a server under valgrind takes a while), driven by ``drive()``, then stopped (SIGTERM).
    ``simulate``: callgrind also simulates the caches and the branch predictor (``totals(out)`` has their
    misses and mispredictions)."""
    log = out.with_suffix(".log")
    with log.open("wb") as handle:
        process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                    *(["--cache-sim=yes", "--branch-sim=yes"] if simulate else []), *argv],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    wait_until_ready(process, ready, log)
    drive()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=900)
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"no count in {log}")
    return int(found.group(1))


def totals(out: Path) -> dict[str, int]:
    """The totals of a callgrind file by event: ``Ir``, and with the cache simulation the instruction and
    data reads and writes (``Dr``, ``Dw``) and their misses in the first level (``I1mr``, ``D1mr``, ``D1mw``)
    and the last level (``ILmr``, ``DLmr``, ``DLmw``) of the machine's caches as valgrind sizes them, and the
    conditional and indirect branches (``Bc``, ``Bi``) and their mispredictions (``Bcm``, ``Bim``)."""
    events: list[str] = []
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            return dict(zip(events, (int(n) for n in line.split()[1:])))
    raise RuntimeError(f"no totals in {out}")


def wait_until_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path | None) -> None:
    deadline = time.monotonic() + 900
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer:\n{log.read_text()[-2000:] if log else ''}")
        time.sleep(0.5)


async def read_answer(reader: asyncio.StreamReader, status: bytes) -> None:
    """One HTTP/1.1 answer read whole; it must have ``status`` (e.g. b"200")."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 " + status):
        raise RuntimeError(head[:300].decode(errors="replace"))
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    await reader.readexactly(int(length.group(1)) if length else 0)


def report(name: str, totals: list[int], count: int, unit: str, work: Path) -> None:
    """The difference of the two runs' totals per ``unit``: its instructions without start-up and shut-down."""
    print(f"{name}: {(totals[1] - totals[0]) / count:,.0f} instructions per {unit} "
          f"({totals[0]:,} and {totals[1]:,} in all; files in {work})", flush=True)
