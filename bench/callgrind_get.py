"""Instructions per link GET, counted by callgrind: a figure the machine's load does not move.

``cabinet serve`` runs under ``valgrind --tool=callgrind`` twice, on an instance seeded as the link
bench's (1,000 invitations, each link opened once already: the steady rounds' page). Each run first
sends every link once (the kept pages rendered, the tokens checked and kept), then the second run sends
GETS more, each a new browser without a cookie, 16 at a time over keep-alive connections. The
difference of the two totals, divided by GETS, is a page's instructions without start-up and shut-down.
``--ceiling`` counts the ceiling's (``bench.ceilings static``) the same way, and ``--floor`` the GET
floor's (``bench.floors get``, its own 1,000 invitations seeded in WORKDIR/floor, a page as long as
Cabinet's), so the three are counted under the same load.

    .venv/bin/python -m bench.callgrind_get WORKDIR [--gets 2000] [--ceiling | --floor] [--simulate]

``--simulate`` has callgrind simulate the caches (valgrind's model of this machine's first and last
levels) and a branch predictor as well: the misses and mispredictions per GET of a larger program,
counted as the instructions are.

WORKDIR keeps the seeded instance (seeding takes minutes) and the callgrind files, for
``callgrind_annotate``. Cabinet's work by the clock (the outbox worker's polls, the scheduler's
passes) is put off for the count (``QUIET``): on a loaded machine a run under callgrind lasts ten
times as long, and its polls added up to 40-60k instructions a GET.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import httpx

from bench import floors, seed
from bench.callgrind import collected, read_answer, report, totals, wait_until_ready
from bench.instance import BIN, Instance, free_port

CONNECTIONS = 16
# Cabinet's clock-driven work, put off past the count (no GET queues an email or needs a pass).
QUIET = {"CABINET_MAIL_POLL_INTERVAL": "3600", "CABINET_SCHEDULER_INTERVAL": "3600"}


async def load(port: int, paths: list[str], count: int) -> None:
    """``count`` GETs of ``paths`` in turn, without cookies, each answered 200 and read whole."""
    todo = iter(range(count))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in todo:
            writer.write(f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            await read_answer(reader, b"200")
        writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


def instance(work: Path) -> tuple[Path, int, list[str]]:
    """The config, port and links of the instance seeded in ``work`` (made on the first call)."""
    config, paths_file = work / "instance" / "cabinet.toml", work / "paths.pickle"
    if not paths_file.exists():
        inst = Instance(work / "instance")  # writes the config, with free ports
        inst.cli("init")
        paths = seed.seed_invitations(inst.config, 1000).invitation_paths
        inst.start()
        try:
            for path in paths:  # the first openings, recorded: every later GET is a steady one
                page = httpx.get(inst.base_url + path).raise_for_status()
        finally:
            inst.stop()
        (work / "page_size").write_text(str(len(page.content)))  # the ceiling's page is as long
        paths_file.write_bytes(pickle.dumps(paths))
    port = int(re.search(r'listen = "127.0.0.1:(\d+)"', config.read_text()).group(1))  # type: ignore[union-attr]
    return config, port, pickle.loads(paths_file.read_bytes())


def floor_paths(folder: Path, count: int, page_size: str) -> list[str]:
    """The links of the floor's ``count`` invitations, seeded in ``folder`` on the first call and each
    opened once there, as Cabinet's are: every counted GET is a steady one (no first opening written)."""
    paths_file = folder / "paths.pickle"
    if not paths_file.exists():
        paths = floors.seed(folder, count).paths
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "bench.floors", "get", str(port), str(folder), page_size])
        try:
            wait_until_ready(server, answers(f"http://127.0.0.1:{port}{paths[0]}"), None)
            asyncio.run(load(port, paths, len(paths)))
        finally:
            server.send_signal(signal.SIGINT)  # aiohttp's run_app: its cleanup commits the openings
            server.wait(timeout=60)
        paths_file.write_bytes(pickle.dumps(paths))
    return pickle.loads(paths_file.read_bytes())


def answers(url: str) -> Callable[[], bool]:
    """Whether ``url`` answers 200 now."""
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=60).status_code == 200
        except httpx.HTTPError:
            return False
    return ready


def counted(argv: list[str], port: int, paths: list[str], gets: int, out: Path, simulate: bool = False) -> int:
    """Instructions of ``argv`` under callgrind, serving every link once and then ``gets`` GETs."""
    def drive() -> None:
        asyncio.run(load(port, paths, len(paths)))
        asyncio.run(load(port, paths, gets))

    return collected(argv, out, answers(f"http://127.0.0.1:{port}{paths[0]}"), drive, env={**os.environ, **QUIET},
                     simulate=simulate)


def report_misses(name: str, files: list[Path], gets: int) -> None:
    """The simulated caches' and branch predictor's events per GET: the difference of the two runs' totals."""
    first, second = (totals(out) for out in files)
    per = {event: (second[event] - first.get(event, 0)) / gets for event in second}
    print(f"{name}, per GET: " + ", ".join(f"{event} {count:,.0f}" for event, count in per.items()), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--gets", type=int, default=2000)
    server = parser.add_mutually_exclusive_group()
    server.add_argument("--ceiling", action="store_true", help="count the ceiling's instructions instead")
    server.add_argument("--floor", action="store_true", help="count the GET floor's instructions instead")
    parser.add_argument("--simulate", action="store_true",
                        help="simulate the caches and branch predictor too (slower): misses per GET")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    config, cabinet_port, paths = instance(args.work)
    if args.ceiling:
        port = free_port()
        size = (args.work / "page_size").read_text()
        command = [sys.executable, "-m", "bench.ceilings", "static", str(port), size]
        name = "ceiling"
    elif args.floor:
        port = free_port()
        size = (args.work / "page_size").read_text()
        paths = floor_paths(args.work / "floor", len(paths), size)
        command = [sys.executable, "-m", "bench.floors", "get", str(port), str(args.work / "floor"), size]
        name = "floor"
    else:
        port = cabinet_port
        command = [str(BIN / "cabinet"), "--config", str(config), "serve"]
        name = "cabinet"
    suffix = "-simulated" if args.simulate else ""
    files = [args.work / f"{name}-{gets}{suffix}.cg" for gets in (0, args.gets)]
    counts = [counted(command, port, paths, gets, out, args.simulate) for gets, out in zip((0, args.gets), files)]
    report(name, counts, args.gets, "GET", args.work)
    if args.simulate:
        report_misses(name, files, args.gets)


if __name__ == "__main__":
    main()
