"""Instructions per accept POST, counted by callgrind: a figure the machine's load does not move.

The accept's own work only: the emails it queues are not sent during the count (the server runs with
its outbox worker's ``send_due`` idle, the floor with its sender idle), since sending them is measured
on its own (bench/README.md, "Earlier results") and comes after a burst anyway. An instance is seeded once (WARM +
ACCEPTS invitations, the accountant signed in: the cookie and CSRF token the bench sends) and copied
fresh for each run. A run sends WARM accepts, then, in the second run only, ACCEPTS more, 16 at a time
over keep-alive connections, as the accept bench does; the difference of the two totals divided by
ACCEPTS is an accept's instructions without start-up, warm-up and shut-down.

    .venv/bin/python -m bench.callgrind_accept WORKDIR [--accepts 500] [--python PY] [--floor] [--tag T]
        [--postgres URL]

``--python``: the interpreter whose ``daemon`` serves (another worktree's venv: an A/B on one seed).
``--floor`` counts ``bench.floors``' accept the same way. WORKDIR keeps the seeds and callgrind files.
``--postgres``: the instance on that PostgreSQL server (a maintenance database's URL), as
``bench.callgrind_inbound``'s: the seed is a database of its own, each run a copy of it, dropped
afterwards. Only Cabinet's process is under callgrind, not the server's backends; the libpq statements
it sent for the counted accepts are printed too (their batches: a batch's cost is shared by its accepts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import httpx

from bench import floors, seed
from bench.callgrind import collected, read_answer, report
from bench.callgrind_inbound import Server, libpq_sends
from bench.instance import Instance, free_port
from bench.run import _signed_in

CONNECTIONS = 16
WARM = 100

# The servers, their background email work idle (see the docstring).
CABINET = ("import sys; from mailer.outbox import OutboxWorker\n"
           "async def idle(self, *a, **k): return 0\n"
           "OutboxWorker.send_due = idle\n"
           "from daemon.cli import main; sys.argv[0] = 'cabinet'; sys.exit(main())")
FLOOR = ("import asyncio, sys; from bench import floors\n"
         "async def idle(self): await asyncio.Event().wait()\n"
         "floors.Sender.compose = idle; floors.Sender.send = idle\n"
         "floors.main(sys.argv[1:])")


async def load(port: int, requests: list[tuple[str, str, str]], origin: str | None = None) -> None:
    """Each (path, body, cookie) POSTed once, answered 303 and read whole. ``origin``: the served public
    URL's, when it is not the listening port's (a run on ports of its own)."""
    todo = iter(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent_origin = origin or f"http://127.0.0.1:{port}"
        for path, body, cookie in todo:
            writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {sent_origin}\r\n"
                          f"Sec-Fetch-Site: same-origin\r\nCookie: {cookie}\r\n"
                          f"Content-Type: application/x-www-form-urlencoded\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
            await read_answer(reader, b"303")
        writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


def seeded(work: Path, count: int, floor: bool, server: Server | None = None) -> tuple[Path, list[tuple[str, str, str]]]:
    """The seed folder and its (path, body, cookie) accepts, made on the first call (on PostgreSQL, also its
    database, named by ``server``; made again when it is gone)."""
    postgres = server if server is not None and server.postgres is not None else None
    folder = work / ("floor-seed" if floor else "seed-pg" if postgres else "seed")
    requests_file = folder.with_suffix(".json")
    if postgres and requests_file.exists() and not _database_present(postgres):
        requests_file.unlink()
    if not requests_file.exists():
        shutil.rmtree(folder, ignore_errors=True)
        if floor:
            made = floors.seed(folder, count)
            paths, cookie, csrf = made.paths, made.cookie, made.csrf
        else:
            inst = Instance(folder, postgres.create(postgres.seed) if postgres else "")
            inst.cli("init")
            paths = seed.seed_invitations(inst.config, count).invitation_paths
            inst.start()
            try:
                cookie, csrf = _signed_in(inst.base_url)
            finally:
                inst.stop()
        requests_file.write_text(json.dumps([(p + "/accept", f"csrf_token={csrf}", cookie) for p in paths]))
    return folder, [tuple(r) for r in json.loads(requests_file.read_text())]


def _database_present(server: Server) -> bool:
    from sqlalchemy import create_engine

    engine = create_engine(server.postgres)  # type: ignore[arg-type]
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %(name)s",
                                              {"name": server.prefix + server.seed}).first() is not None
    finally:
        engine.dispose()


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=60)
        return True
    except httpx.HTTPError:
        return False


def counted(argv: list[str], port: int, requests: list[tuple[str, str, str]], out: Path,
            origin: str | None = None) -> int:
    """Instructions of ``argv`` under callgrind, serving ``requests``. Started in the run's folder: ``python -c``
    imports from its working directory first, which must not be a checkout other than the one whose
    interpreter was asked for. A fixed hash seed: with a random one, dict lookups alone moved the count by
    18k-30k an accept from run to run (bench/callgrind_accept_write.py's finding)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return collected(argv, out, lambda: _answers(port), lambda: asyncio.run(load(port, requests, origin)), env=env,
                     cwd=out.parent)


def one(work: Path, seed_folder: Path, requests: list[tuple[str, str, str]], python: str, floor: bool,
        name: str, server: Server | None = None) -> int:
    """A fresh copy of the seed (on PostgreSQL, of its database too) served under callgrind with ``requests``."""
    run = work / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(seed_folder, run)
    if floor:
        port = free_port()
        argv = [python, "-c", FLOOR, "accept", str(port), str(run), "1", "direct"]
    else:
        config = run / "cabinet.toml"
        text = config.read_text().replace(str(seed_folder), str(run))
        port = int(re.search(r'listen = "127.0.0.1:(\d+)"', text).group(1))  # type: ignore[union-attr]
        origin = None
        if server is not None and server.postgres is not None:
            # A copy of the seed's database of its own, and ports of its own, so that two counts (an A/B)
            # can run at once; the public URL stays (it is recorded), so the POSTs send its origin.
            text = text.replace(f'database_url = "{server.url(server.seed)}"',
                                f'database_url = "{server.create(name, server.seed)}"')
            origin = f"http://127.0.0.1:{port}"
            text = re.sub(r'listen = "127\.0\.0\.1:\d+"', lambda _: f'listen = "127.0.0.1:{free_port()}"', text)
            port = int(re.search(r'listen = "127.0.0.1:(\d+)"', text).group(1))  # type: ignore[union-attr]
        config.write_text(text)
        argv = [python, "-c", CABINET, "--config", str(config), "serve"]
    try:
        return counted(argv, port, requests, work / f"{name}.cg", origin)
    finally:
        if server is not None and not floor:
            server.drop(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--accepts", type=int, default=500)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--floor", action="store_true")
    parser.add_argument("--tag", default="", help="a name for this run's files")
    parser.add_argument("--postgres", help="maintenance database URL of a PostgreSQL server to serve on")
    parser.add_argument("--database-prefix", default="cabinet_callgrind_accept_",
                        help="the start of the names of the databases made on --postgres's server")
    args = parser.parse_args(argv)
    if args.postgres and args.floor:
        parser.error("--postgres serves Cabinet (bench.floors_pg is the PostgreSQL floor)")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    server = Server(args.postgres, args.database_prefix, args.work)
    folder, requests = seeded(args.work, WARM + args.accepts, args.floor, server)
    kind = "floor" if args.floor else "cabinet-pg" if args.postgres else "cabinet"
    names = [f"{kind}{args.tag}-{count}".replace("-", "_") for count in (WARM, WARM + args.accepts)]
    totals = [one(args.work, folder, requests[:count], args.python, args.floor, name, server)
              for name, count in zip(names, (WARM, WARM + args.accepts))]
    report(f"{kind}{args.tag}", totals, args.accepts, "accept", args.work)
    if args.postgres:
        first, second = (libpq_sends(args.work / f"{name}.cg") for name in names)
        print(f"{kind}{args.tag}: libpq sends for the {args.accepts} accepts: "
              + ", ".join(f"{name} {second[name] - first[name]}" for name in sorted(second)), flush=True)


if __name__ == "__main__":
    main()
