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
        [--postgres URL [--round-trips]] [--cpu PAIRS --against PY]

``--python``: the interpreter whose ``daemon`` serves (another worktree's venv: an A/B on one seed).
WORKDIR keeps the seed and the callgrind files, for ``callgrind_annotate``.
``--postgres``: the instance on that PostgreSQL server (a maintenance database's URL): the seed is a
database of its own (``--database-prefix``, ``seed_`` and the work folder's hash), each run a copy of it, dropped afterwards.
``--cpu PAIRS --against PY``: instead of instructions, the CPU time per stored message of the served
process and of its PostgreSQL backends (on ``--postgres``), not under callgrind, in PAIRS runs of
``--python`` and ``--against`` alternating (an A/B on a machine whose load moves CPU time too).
``--round-trips`` (with ``--postgres``): instead of instructions, the round trips and statements the
served process sent PostgreSQL (``bench.roundtrips``: libpq's trace of every connection), per stored
message and per store statement (a batch of the DATAs that arrived while the last one was written), the
same difference of two runs; not under callgrind. How many messages a batch holds depends on timing; the
round trips per store statement do not.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

from sqlalchemy import create_engine, make_url

from bench import roundtrips, seed, smtpload
from bench.callgrind import collected, report, wait_until_ready
from bench.callgrind_get import QUIET
from bench.instance import SERVER_CPU, Instance, free_port, pinned

CONNECTIONS = 8
WARM = 100
STORES = "INSERT INTO inbound"  # the store's statement, as ``bench.roundtrips`` names it (its first words)

# Cabinet serving, processing off (see the docstring).
CABINET = ("import sys; from daemon.inbound import Inbound; from daemon.loops import Repeater\n"
           "def idle(self, *a, **k): return 0\n"
           "Inbound.process_due = idle; Repeater.wake = lambda self: None\n"
           "from daemon.cli import main; sys.argv[0] = 'cabinet'; sys.exit(main())")


class Server:
    """Where the instances keep their data: SQLite in their folders (``postgres`` None), or databases of
    their own on a PostgreSQL server, named ``prefix`` then a run's name."""

    def __init__(self, postgres: str | None, prefix: str, work: Path) -> None:
        self.postgres = postgres
        self.prefix = prefix
        # The seed's database, named after the work folder whose seed it is (two folders, two seeds).
        self.seed = "seed_" + hashlib.sha1(str(work).encode()).hexdigest()[:8]

    def url(self, name: str) -> str:
        assert self.postgres is not None
        return make_url(self.postgres).set(database=self.prefix + name).render_as_string(hide_password=False)

    def create(self, name: str, template: str | None = None) -> str:
        """A fresh database (a copy of ``template``'s, when named), its URL; "" on SQLite."""
        if self.postgres is None:
            return ""
        copy = f' TEMPLATE "{self.prefix + template}"' if template else ""
        self._maintenance(f'DROP DATABASE IF EXISTS "{self.prefix + name}" WITH (FORCE)',
                          f'CREATE DATABASE "{self.prefix + name}"{copy}')
        return self.url(name)

    def backends_cpu(self, database: str) -> dict[int, float]:
        """CPU seconds of each backend connected to ``database`` (PostgreSQL on this machine; {} on SQLite)."""
        if self.postgres is None:
            return {}
        engine = create_engine(self.postgres)
        try:
            with engine.connect() as connection:
                pids = [pid for pid, in connection.exec_driver_sql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %(name)s", {"name": database})]
        finally:
            engine.dispose()
        return {pid: _cpu(pid) for pid in pids}

    def drop(self, name: str) -> None:
        if self.postgres is not None:
            self._maintenance(f'DROP DATABASE IF EXISTS "{self.prefix + name}" WITH (FORCE)')

    def _maintenance(self, *statements: str) -> None:
        engine = create_engine(self.postgres, isolation_level="AUTOCOMMIT")  # type: ignore[arg-type]
        try:
            with engine.connect() as connection:
                for statement in statements:
                    connection.exec_driver_sql(statement)
        finally:
            engine.dispose()


def seeded(work: Path, count: int, server: Server) -> tuple[Path, list[dict[str, str]]]:
    """The seed folder and its replies (``count`` of them), made on the first call (on PostgreSQL, also
    its database, named by ``server``; made again when it is gone)."""
    folder = work / ("inbound-seed" if server.postgres is None else "inbound-seed-pg")
    jobs_file = folder.with_suffix(".json")
    if server.postgres is not None and jobs_file.exists():
        engine = create_engine(server.postgres)
        try:
            with engine.connect() as connection:
                present = connection.exec_driver_sql(
                    "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": server.prefix + server.seed}).first()
        finally:
            engine.dispose()
        if present is None:
            jobs_file.unlink()
    if not jobs_file.exists():
        shutil.rmtree(folder, ignore_errors=True)
        inst = Instance(folder, server.create(server.seed))
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
    return collected(argv, out, lambda: _greets(port), lambda: _drive(port, jobs), env=env, cwd=out.parent)


def _drive(port: int, jobs: list[dict[str, str]]) -> None:
    result = asyncio.run(smtpload.run("127.0.0.1", port, jobs, CONNECTIONS))
    if result["codes"] != {"250": len(jobs)}:
        raise RuntimeError(f"not every message was stored: {result['codes']}")


def traced(argv: list[str], port: int, jobs: list[dict[str, str]], out: Path, env: dict[str, str],
           cwd: Path) -> Counter[str]:
    """Round trips and statements of ``argv`` (``bench.roundtrips``), storing ``jobs``; its traces in ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT,
                                   env={**env, roundtrips.TRACE_FOLDER: str(out)}, cwd=cwd)
    try:
        wait_until_ready(process, lambda: _greets(port), log)
        _drive(port, jobs)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    return roundtrips.counted(out)


def on_cpu(argv: list[str], port: int, jobs: list[dict[str, str]], log: Path, env: dict[str, str], cwd: Path,
           server: Server, database: str) -> tuple[float, float]:
    """CPU seconds ``argv`` spent storing ``jobs[WARM:]`` (after ``jobs[:WARM]``), and those its PostgreSQL
    backends spent (0 on SQLite; read from /proc: the server runs on this machine). Not under callgrind:
    for A/B runs that alternate, since the machine's load moves CPU time too."""
    with log.open("wb") as handle:
        process = subprocess.Popen(pinned(SERVER_CPU, argv), stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        wait_until_ready(process, lambda: _greets(port), log)
        _drive(port, jobs[:WARM])
        server_before, backends_before = _cpu(process.pid), server.backends_cpu(database)
        _drive(port, jobs[WARM:])
        server_after, backends_after = _cpu(process.pid), server.backends_cpu(database)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    return server_after - server_before, sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_after.items())


def _cpu(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MODES = ("callgrind", "trips", "cpu")


def one(work: Path, seed_folder: Path, jobs: list[dict[str, str]], python: str, ceiling: bool, name: str,
        server: Server, mode: str = "callgrind") -> Any:
    """A fresh copy of the seed (or the ceiling) served with ``jobs``: under callgrind (its instructions),
    traced (``trips``: its round trips) or timed (``cpu``: ``on_cpu``'s figures)."""
    env = {**os.environ, **QUIET}
    if ceiling:
        port = free_port()
        argv = [python, "-m", "bench.ceilings", "smtp", str(port)]
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        return counted(argv, port, jobs, work / f"{name}.cg", env)
    # The served checkout is the interpreter's own (``--python``): a PYTHONPATH would put another first.
    env.pop("PYTHONPATH", None)
    run = work / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(seed_folder, run)
    config = run / "cabinet.toml"
    # Ports of its own, so that two counts (an A/B) can run at once (the public URL stays: it is recorded).
    port = free_port()
    text = re.sub(r'listen = "127\.0\.0\.1:\d+"', lambda _: f'listen = "127.0.0.1:{free_port()}"',
                  config.read_text())
    text = re.sub(r'(\[smtp\]\nlisten = "127\.0\.0\.1:)\d+', rf"\g<1>{port}", text)
    if server.postgres is not None:  # a copy of the seed's database of its own
        text = text.replace(f'database_url = "{server.url(server.seed)}"',
                            f'database_url = "{server.create(name, server.seed)}"')
    config.write_text(text)
    try:
        if mode == "trips":
            return traced([python, "-c", roundtrips.PRELUDE + CABINET, "--config", str(config), "serve"], port, jobs,
                          work / f"{name}.trace", env, run)
        if mode == "cpu":
            return on_cpu([python, "-c", CABINET, "--config", str(config), "serve"], port, jobs, run / "serve.log",
                          env, run, server, server.prefix + name)
        return counted([python, "-c", CABINET, "--config", str(config), "serve"], port, jobs, work / f"{name}.cg", env)
    finally:
        server.drop(name)


def cpu_pairs(args: argparse.Namespace, folder: Path, jobs: list[dict[str, str]], server: Server) -> None:
    """``--cpu PAIRS``: ``--python`` and ``--against`` in turn (the order swapped each pair), CPU per message."""
    sides = {"python": args.python, "against": args.against}
    found: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for pair in range(args.cpu):
        for side in (list(sides) if pair % 2 == 0 else list(reversed(sides))):
            spent = one(args.work, folder, jobs, sides[side], False, f"cpu{args.tag}_{side}_{pair}", server, "cpu")
            found[side].append(spent)
            print(f"pair {pair} {side}: {spent[0] / args.messages * 1000:.3f} ms per stored message, "
                  f"its PostgreSQL backends {spent[1] / args.messages * 1000:.3f} ms", flush=True)
    for side, spent in found.items():
        print(f"{side} ({sides[side]}): median {median(s[0] for s in spent) / args.messages * 1000:.3f} ms per "
              f"stored message, backends {median(s[1] for s in spent) / args.messages * 1000:.3f} ms "
              f"({len(spent)} runs)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--ceiling", action="store_true")
    parser.add_argument("--tag", default="", help="a name for this run's files")
    parser.add_argument("--postgres", help="maintenance database URL of a PostgreSQL server to serve on")
    parser.add_argument("--database-prefix", default="cabinet_callgrind_inbound_",
                        help="the start of the names of the databases made on --postgres's server")
    parser.add_argument("--round-trips", action="store_true",
                        help="count round trips and statements to PostgreSQL, not instructions (--postgres)")
    parser.add_argument("--cpu", type=int, metavar="PAIRS",
                        help="CPU time per stored message instead (and PostgreSQL's backends'), PAIRS runs of "
                             "--python and --against alternating")
    parser.add_argument("--against", help="the other interpreter of --cpu's pairs (another worktree's venv)")
    args = parser.parse_args(argv)
    if args.round_trips and (not args.postgres or args.ceiling):
        parser.error("--round-trips counts Cabinet's traffic to PostgreSQL: it needs --postgres, not --ceiling")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    server = Server(args.postgres, args.database_prefix, args.work)
    folder, jobs = seeded(args.work, WARM + args.messages, server)
    if args.cpu:
        if not args.against or args.ceiling or args.round_trips:
            parser.error("--cpu alternates Cabinet under --python and --against")
        cpu_pairs(args, folder, jobs[:WARM + args.messages], server)
        return
    kind = "ceiling" if args.ceiling else "cabinet"
    runs = [one(args.work, folder, jobs[:count], args.python, args.ceiling, f"{kind}{args.tag}_{count}", server,
                "trips" if args.round_trips else "callgrind")
            for count in (WARM, WARM + args.messages)]
    if args.round_trips:
        first, second = runs
        assert isinstance(first, Counter) and isinstance(second, Counter)
        delta = {key: second[key] - first[key] for key in ("round_trips", "statements", "begin", "commit", STORES)}
        print(f"{kind}{args.tag}: {args.messages} stored messages in {delta[STORES]} store statements "
              f"({args.messages / max(delta[STORES], 1):.2f} a statement); per stored message: "
              + ", ".join(f"{key} {delta[key] / args.messages:.3f}" for key in ("round_trips", "statements", "begin", "commit"))
              + f"; round trips per store statement {delta['round_trips'] / max(delta[STORES], 1):.2f}"
              f" (traces in {args.work})", flush=True)
        return
    report(f"{kind}{args.tag}", [int(total) for total in runs], args.messages, "stored message", args.work)
    if args.postgres and not args.ceiling:
        # How many statements the extra messages took (their batches: a message's share of a batch's cost
        # depends on how many it held), from libpq's calls that callgrind counted.
        first, second = (libpq_sends(args.work / f"{kind}{args.tag}_{count}.cg") for count in (WARM, WARM + args.messages))
        print(f"{kind}{args.tag}: libpq sends for the {args.messages} messages: "
              + ", ".join(f"{name} {second[name] - first[name]}" for name in sorted(second)), flush=True)


# libpq's functions that send a statement: extended protocol (a statement with parameters, prepared or
# not), the simple protocol (psycopg's BEGIN and COMMIT), a statement's preparation.
LIBPQ_SENDS = ("PQsendQueryParams", "PQsendQueryPrepared", "PQsendQuery", "PQsendPrepare")


def libpq_sends(callgrind_file: Path) -> Counter[str]:
    """Calls of each of ``LIBPQ_SENDS`` in a callgrind file (every caller's ``calls=`` to it, summed)."""
    names: dict[str, str] = {}
    found: Counter[str] = Counter({name: 0 for name in LIBPQ_SENDS})
    called = None
    with callgrind_file.open(errors="replace") as lines:
        for line in lines:
            named = re.match(r"(c?fn)=\((\d+)\)(?: (.+))?", line)
            if named:
                if named[3]:
                    names[named[2]] = named[3].strip()
                if named[1] == "cfn":
                    called = names.get(named[2])
            elif called is not None and line.startswith("calls=") and called in found:
                found[called] += int(line[6:].split()[0])
    return found


if __name__ == "__main__":
    main()
