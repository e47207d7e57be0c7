"""Instructions per stored inbound message, counted by callgrind: a figure the machine's load does not move.

The store's own work, from the connection's MAIL FROM to the 250 after the COMMIT: processing is put off
during the count (``Inbound.process_due`` idle, its wake-ups ignored; the outbox worker's and scheduler's
polls an hour apart, as ``bench.callgrind_get``'s ``QUIET``), since it comes after a burst and the drain
is measured on its own (bench/run.py ``inbound``). An instance is seeded once as the inbound bench's (200
invitations, replies of 3-8 KB to their reply+ addresses) and copied fresh for each run. A run sends WARM
messages, then, in the second run only, MESSAGES more, over 8 persistent connections as the bench does;
the difference of the two totals divided by MESSAGES is a stored message's instructions without
start-up, warm-up and shut-down. ``--ceiling`` counts the no-op aiosmtpd (``bench.ceilings smtp``) the
same way.

    .venv/bin/python -m bench.callgrind_inbound WORKDIR [--messages 500] [--python PY] [--ceiling] [--tag T]

``--python``: the interpreter whose ``daemon`` serves (another worktree's venv: an A/B on one seed).
WORKDIR keeps the seed and the callgrind files, for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

from bench import seed, smtpload
from bench.callgrind import collected, report
from bench.callgrind_get import QUIET
from bench.instance import Instance, free_port

CONNECTIONS = 8
WARM = 100

# Cabinet serving, processing off (see the docstring).
CABINET = ("import sys; from daemon.inbound import Inbound; from daemon.loops import Repeater\n"
           "def idle(self, *a, **k): return 0\n"
           "Inbound.process_due = idle; Repeater.wake = lambda self: None\n"
           "from daemon.cli import main; sys.argv[0] = 'cabinet'; sys.exit(main())")


def seeded(work: Path, count: int) -> tuple[Path, list[dict[str, str]]]:
    """The seed folder and its replies (``count`` of them), made on the first call."""
    folder = work / "inbound-seed"
    jobs_file = folder.with_suffix(".json")
    if not jobs_file.exists():
        shutil.rmtree(folder, ignore_errors=True)
        inst = Instance(folder)
        inst.cli("init")
        jobs_file.write_text(json.dumps(seed.reply_jobs(seed.seed_invitations(inst.config, 200), count)))
    return folder, json.loads(jobs_file.read_text())


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
            return connection.recv(3) == b"220"
    except OSError:
        return False


def counted(argv: list[str], port: int, jobs: list[dict[str, str]], out: Path, env: dict[str, str]) -> int:
    """Instructions of ``argv`` under callgrind, storing ``jobs`` (each answered 250). Started in the run's
    folder: ``python -c`` imports from its working directory first, which must not be a checkout other
    than the one whose interpreter was asked for."""
    def drive() -> None:
        result = asyncio.run(smtpload.run("127.0.0.1", port, jobs, CONNECTIONS))
        if result["codes"] != {"250": len(jobs)}:
            raise RuntimeError(f"not every message was stored: {result['codes']}")

    return collected(argv, out, lambda: _greets(port), drive, env=env, cwd=out.parent)


def one(work: Path, seed_folder: Path, jobs: list[dict[str, str]], python: str, ceiling: bool, name: str) -> int:
    """A fresh copy of the seed (or the ceiling) served under callgrind with ``jobs``."""
    env = {**os.environ, **QUIET}
    if ceiling:
        port = free_port()
        argv = [python, "-m", "bench.ceilings", "smtp", str(port)]
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    else:
        run = work / f"run-{name}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(seed_folder, run)
        config = run / "cabinet.toml"
        # Ports of its own, so that two counts (an A/B) can run at once (the public URL stays: it is recorded).
        port = free_port()
        text = re.sub(r'listen = "127\.0\.0\.1:\d+"', lambda _: f'listen = "127.0.0.1:{free_port()}"',
                      config.read_text())
        config.write_text(re.sub(r'(\[smtp\]\nlisten = "127\.0\.0\.1:)\d+', rf"\g<1>{port}", text))
        argv = [python, "-c", CABINET, "--config", str(config), "serve"]
    return counted(argv, port, jobs, work / f"{name}.cg", env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--ceiling", action="store_true")
    parser.add_argument("--tag", default="", help="a name for this run's files")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    folder, jobs = seeded(args.work, WARM + args.messages)
    kind = "ceiling" if args.ceiling else "cabinet"
    totals = [one(args.work, folder, jobs[:count], args.python, args.ceiling, f"{kind}{args.tag}-{count}")
              for count in (WARM, WARM + args.messages)]
    report(f"{kind}{args.tag}", totals, args.messages, "stored message", args.work)


if __name__ == "__main__":
    main()
