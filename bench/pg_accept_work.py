"""The PostgreSQL backends' work per accept, statement by statement: figures the machine's load does not move.

A throwaway PostgreSQL cluster of its own (initdb in a temporary folder, a free loopback port,
``pg_stat_statements`` preloaded, ``track_functions = all``; autovacuum off and full-page writes off so
that WAL bytes are the statements' own, not a checkpoint's or a vacuum's, and an ANALYZE before the
measure instead, for the plans autovacuum would give) runs a real ``cabinet serve``
(``bench.instance.Instance``, its emails to a Maildir, as ``bench/run.py``'s accept bench sends them)
and then the floor (``bench/floors_pg.py``'s accept app, its emails to ``bench.ceilings``' SMTP sink),
each in a database of its own. Each takes ``--warm`` accepts first (pools, caches, prepared statements),
then ``--accepts`` POSTs over 16 keep-alive connections (``bench.httpload``), and is measured until its
last email is out. Per accept:

- statements (``pg_stat_statements``, nested ones, a trigger's, included and marked ``>``): calls, rows,
  shared blocks hit/dirtied/written, WAL records and bytes; those of the outbox worker (it claims and
  marks the outbox: ``UPDATE outbox``/``SELECT … FROM outbox``) apart from the accept's own;
- WAL bytes (``pg_current_wal_lsn`` before and after), commits and rollbacks (``pg_stat_database``);
- WAL records by kind (``pg_waldump --stats=record`` over the same LSNs: index entries, row locks, commits)
  and the rows locked (``Heap/LOCK``) by table;
- tuples inserted/updated/HOT-updated/deleted per table and its index count (``pg_stat_user_tables``),
  trigger functions' calls (``pg_stat_user_functions``).

    .venv/bin/python -m bench.pg_accept_work [--accepts 400] [--warm 50] [--no-floor] [--top 25]

Needs PostgreSQL's server binaries (``/usr/lib/postgresql/*/bin``); as root, the cluster runs as the
``postgres`` user. Everything it starts is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg

from bench import floors, seed
from bench.instance import LOAD_CPU, Ceiling, Instance, free_port, wait_until
from bench.run import _signed_in, httpload, write_requests

CONNECTIONS = 16  # as bench/run.py's accept bench
STATS_FLUSH = 11.0  # an idle backend's table and function counters reach the server within 10 s (PGSTAT_IDLE_INTERVAL)
TAG = "/* pg_accept_work */"  # the bench's own statements, left out
_WORKER = re.compile(r"^\s*(UPDATE\s+outbox\b|SELECT\b.*\bFROM\s+outbox\b)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Cluster:
    url: str  # the maintenance database's: postgresql://postgres@127.0.0.1:PORT/postgres
    bin_dir: Path
    data: Path

    def wal_records(self, start: str, end: str) -> dict[str, int]:
        """The WAL records between two LSNs by kind (``pg_waldump --stats=record``), e.g. ``Heap/INSERT``."""
        out = subprocess.run([str(self.bin_dir / "pg_waldump"), "--stats=record", "-p", str(self.data / "pg_wal"),
                              "-s", start, "-e", end], capture_output=True, text=True, check=True).stdout
        records = {}
        for line in out.splitlines():
            found = re.match(r"^(\w+/\S+(?: \S+)*?)\s+(\d+) \(", line)
            if found and found.group(1) != "Total":
                records[found.group(1)] = int(found.group(2))
        return records

    def row_locks(self, start: str, end: str) -> Counter[int]:
        """``Heap/LOCK`` records (a row locked: a foreign key's check, ``FOR UPDATE``) by relfilenode."""
        out = subprocess.run([str(self.bin_dir / "pg_waldump"), "-r", "Heap", "-p", str(self.data / "pg_wal"),
                              "-s", start, "-e", end], capture_output=True, text=True, check=True).stdout
        return Counter(int(found.group(1)) for found in re.finditer(r"desc: LOCK .*?rel \d+/\d+/(\d+)", out))


@contextmanager
def cluster() -> Iterator[Cluster]:
    """A throwaway cluster, started; stopped and removed on exit."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    bin_dir = Path(binaries[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="cabinet-pgwork-", dir="/tmp"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run([*as_owner, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--encoding=UTF8", "--locale=C", "--no-sync"], cwd=root, check=True, capture_output=True)
    port = free_port()
    options = (f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off "
               "-c full_page_writes=off -c autovacuum=off -c shared_preload_libraries=pg_stat_statements "
               "-c pg_stat_statements.track=all -c pg_stat_statements.max=5000 -c track_functions=all")
    subprocess.run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                    "-o", options, "start"], cwd=root, check=True, capture_output=True)
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield Cluster(url, bin_dir, data)
    finally:
        subprocess.run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       cwd=root, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Statement:
    query: str
    toplevel: bool
    calls: int = 0
    rows: int = 0
    hit: int = 0
    dirtied: int = 0
    written: int = 0
    wal_records: int = 0
    wal_bytes: int = 0

    def add(self, other: Statement) -> None:
        for name in ("calls", "rows", "hit", "dirtied", "written", "wal_records", "wal_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Snapshot:
    lsn: str = ""
    commits: int = 0
    rollbacks: int = 0
    tables: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # ins, upd, hot, del
    functions: dict[str, int] = field(default_factory=dict)


@dataclass
class Measured:
    accepts: int
    statements: list[Statement]
    wal_bytes: int
    commits: int
    rollbacks: int
    tables: dict[str, tuple[int, int, int, int]]
    indexes: dict[str, int]
    functions: dict[str, int]
    records: dict[str, int]  # WAL records by kind (pg_waldump), the accepts' and their emails' together
    row_locks: dict[str, int]  # Heap/LOCK records by table


class Database:
    """One database of the cluster, measured between ``start`` and ``stop``."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.name = name
        self.url = cluster.url.rsplit("/", 1)[0] + "/" + name
        self._cluster = cluster
        self._server = cluster.url
        with psycopg.connect(self._server, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # a fixed name

    def _snapshot(self) -> Snapshot:
        with psycopg.connect(self.url, autocommit=True) as connection:
            lsn = connection.execute(f"{TAG} SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            commits, rollbacks = connection.execute(
                f"{TAG} SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()  # type: ignore[misc]
            tables = {row[0]: tuple(row[1:]) for row in connection.execute(
                f"{TAG} SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables")}
            functions = {row[0]: row[1] for row in connection.execute(
                f"{TAG} SELECT funcname, calls FROM pg_stat_user_functions")}
        return Snapshot(lsn, commits, rollbacks, tables, functions)

    def start(self) -> None:
        """Counters from now (after every backend's pending counters went out)."""
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f"{TAG} ANALYZE")  # the plans autovacuum's ANALYZE would give (it is off)
        time.sleep(STATS_FLUSH)
        with psycopg.connect(self._server, autocommit=True) as connection:
            connection.execute("SELECT pg_stat_statements_reset()")
        self._before = self._snapshot()

    def stop(self, accepts: int, verbose: bool = False) -> Measured:
        """What the database did since ``start``: statements and WAL now, the table counters once flushed."""
        with psycopg.connect(self._server, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT query, toplevel, calls, rows, shared_blks_hit, shared_blks_dirtied, shared_blks_written, "
                "wal_records, wal_bytes FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = %s", (self.name,)).fetchall()
            lsn = connection.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            wal = connection.execute("SELECT pg_wal_lsn_diff(%s, %s)", (lsn, self._before.lsn)).fetchone()[0]  # type: ignore[index]
        records = self._cluster.wal_records(self._before.lsn, lsn)
        locks = self._cluster.row_locks(self._before.lsn, lsn)
        time.sleep(STATS_FLUSH)
        after = self._snapshot()
        with psycopg.connect(self.url, autocommit=True) as connection:
            names: dict[int, str] = dict(connection.execute(
                "SELECT pg_relation_filenode(oid)::bigint, relname FROM pg_class WHERE relkind = 'r'").fetchall())
            indexes = {row[0]: row[1] for row in connection.execute(
                "SELECT c.relname, count(i.indexrelid) FROM pg_class c LEFT JOIN pg_index i ON i.indrelid = c.oid "
                "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace GROUP BY c.relname")}
            if verbose:
                for row in connection.execute(
                        "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"):
                    print("  ", *row)
                print("   outbox raw bytes, stored:", connection.execute(
                    "SELECT avg(length(raw))::int, avg(pg_column_size(raw))::int, avg(pg_column_size(o.*))::int "
                    "FROM outbox o WHERE raw IS NOT NULL").fetchone())
                print("   outbox heap and TOAST bytes per row:", connection.execute(
                    "SELECT pg_table_size('outbox') / count(*), pg_relation_size('outbox') / count(*) FROM outbox").fetchone())
        statements = [Statement(" ".join(str(query).split()), bool(top), *map(int, rest))
                      for query, top, *rest in rows if TAG not in str(query)]
        tables: dict[str, tuple[int, int, int, int]] = {}
        for table, counts in after.tables.items():
            before = self._before.tables.get(table, (0, 0, 0, 0))
            inserted, updated, hot, deleted = (a - b for a, b in zip(counts, before, strict=True))
            if inserted or updated or hot or deleted:
                tables[table] = (inserted, updated, hot, deleted)
        functions = {name: calls - self._before.functions.get(name, 0) for name, calls in after.functions.items()
                     if calls != self._before.functions.get(name, 0)}
        return Measured(accepts, statements, int(wal), after.commits - self._before.commits,
                        after.rollbacks - self._before.rollbacks, tables, indexes, functions, records,
                        {names.get(node, str(node)): count for node, count in locks.items()})

    def drop(self) -> None:
        with psycopg.connect(self._server, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _emails_waiting(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        return int(connection.execute(f"{TAG} SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0])  # type: ignore[index]


def cabinet(server: Cluster, work: Path, accepts: int, warm: int, verbose: bool = False) -> Measured:
    """``accepts`` accept POSTs through a real ``cabinet serve``, measured until their emails are out."""
    db = Database(server, "cabinet_work")
    inst = Instance(work / "cabinet", db.url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        inst.cli("init")
        seeded = seed.seed_invitations(inst.config, warm + accepts)
        inst.start()
        cookie, csrf = _signed_in(inst.base_url)
        lines = [("POST", path + "/accept", f"csrf_token={csrf}", cookie) for path in seeded.invitation_paths]
        httpload(inst.base_url, write_requests(work / "cabinet-warm.txt", lines[:warm]), CONNECTIONS)
        wait_until(lambda: _emails_waiting(db.url) == 0, 300, "the warm accepts' emails")
        db.start()
        sample = httpload(inst.base_url, write_requests(work / "cabinet.txt", lines[warm:]), CONNECTIONS)
        if sample.errors or sample.count != accepts:
            raise RuntimeError(f"{sample.count} answers, {sample.errors} errors (serve.log: {inst.log})")
        wait_until(lambda: _emails_waiting(db.url) == 0, 300, "the accepts' emails")
        return db.stop(accepts, verbose)
    finally:
        inst.stop()
        db.drop()


def floor(server: Cluster, work: Path, accepts: int, warm: int) -> Measured:
    """The same through ``bench/floors_pg.py``'s accept (plain writes), its emails to an SMTP sink."""
    db = Database(server, "floor_work")
    folder = work / "floor"
    count_file = work / "floor-sink.count"
    try:
        seeded = floors.seed(folder, warm + accepts, db.url)
        sink = Ceiling(work, "sink", str(count_file), cpu=LOAD_CPU)
        try:
            server_process = Ceiling(work, "accept", str(folder), str(sink.port), "direct", "plain",
                                     module="bench.floors")
            try:
                url = f"http://127.0.0.1:{server_process.port}"
                lines = [("POST", path + "/accept", f"csrf_token={seeded.csrf}", seeded.cookie) for path in seeded.paths]
                httpload(url, write_requests(work / "floor-warm.txt", lines[:warm]), CONNECTIONS)
                wait_until(lambda: _emails_waiting(db.url) == 0, 300, "the floor's warm emails")
                db.start()
                sample = httpload(url, write_requests(work / "floor.txt", lines[warm:]), CONNECTIONS)
                if sample.errors or sample.count != accepts:
                    raise RuntimeError(f"floor: {sample.count} answers, {sample.errors} errors")
                wait_until(lambda: _emails_waiting(db.url) == 0, 300, "the floor's emails")
                return db.stop(accepts)
            finally:
                server_process.stop()
        finally:
            sink.stop()
    finally:
        db.drop()


def _per(value: float, accepts: int) -> str:
    return f"{value / accepts:8.2f}"


def report(label: str, measured: Measured, top: int) -> str:
    n = measured.accepts
    lines = [f"== {label}: {n} accepts =="]
    lines.append(f"WAL {measured.wal_bytes / n:.0f} bytes/accept (pg_current_wal_lsn); commits {measured.commits / n:.2f}, "
                 f"rollbacks {measured.rollbacks / n:.2f} per accept")
    for side, worker in (("the accept's own", False), ("the outbox worker's", True)):
        chosen = [s for s in measured.statements if bool(_WORKER.match(s.query)) == worker]
        total = Statement("", True)
        for statement in chosen:
            total.add(statement)
        top_calls = sum(s.calls for s in chosen if s.toplevel)
        lines.append(f"-- {side}: {top_calls / n:.2f} top-level statements/accept ({total.calls / n:.2f} with nested), "
                     f"rows {total.rows / n:.2f}, shared blocks hit {total.hit / n:.1f} dirtied {total.dirtied / n:.2f} "
                     f"written {total.written / n:.2f}, WAL records {total.wal_records / n:.2f} bytes {total.wal_bytes / n:.0f}")
        lines.append("   calls    rows     hit dirtied  walrec walbytes  statement (per accept; > nested)")
        for s in sorted(chosen, key=lambda s: (-s.wal_bytes, -s.hit))[:top]:
            lines.append(f"{_per(s.calls, n)}{_per(s.rows, n)}{_per(s.hit, n)}{_per(s.dirtied, n)}"
                         f"{_per(s.wal_records, n)}{s.wal_bytes / n:9.0f}  {'' if s.toplevel else '> '}{s.query[:150]}")
    lines.append("-- tuples per accept: table (indexes): inserted updated hot-updated deleted")
    for table, (ins, upd, hot, dele) in sorted(measured.tables.items()):
        lines.append(f"   {table} ({measured.indexes.get(table, 0)}): {ins / n:.2f} {upd / n:.2f} {hot / n:.2f} {dele / n:.2f}")
    lines.append(f"   all tables: inserted {sum(t[0] for t in measured.tables.values()) / n:.2f}, updated "
                 f"{sum(t[1] for t in measured.tables.values()) / n:.2f} (HOT {sum(t[2] for t in measured.tables.values()) / n:.2f})")
    lines.append("-- WAL records per accept (pg_waldump --stats=record; accepts and emails together): " + ", ".join(
        f"{kind} {count / n:.2f}" for kind, count in sorted(measured.records.items(), key=lambda r: -r[1])
        if count / n >= 0.05))
    lines.append("-- rows locked per accept (Heap/LOCK by table): " + ", ".join(
        f"{table} {count / n:.2f}" for table, count in sorted(measured.row_locks.items(), key=lambda r: -r[1])))
    if measured.functions:
        lines.append("-- function (trigger) calls per accept: " + ", ".join(
            f"{name} {calls / n:.2f}" for name, calls in sorted(measured.functions.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accepts", type=int, default=400, help="accepts measured")
    parser.add_argument("--warm", type=int, default=50, help="accepts before the measure")
    parser.add_argument("--no-floor", action="store_true", help="Cabinet only")
    parser.add_argument("--schema", action="store_true", help="also Cabinet's indexes, the stored emails' and the outbox's sizes")
    parser.add_argument("--top", type=int, default=25, help="statements listed per side")
    args = parser.parse_args(argv)
    with cluster() as server, tempfile.TemporaryDirectory(prefix="cabinet-pgwork-run-") as work:
        print(report("Cabinet", cabinet(server, Path(work), args.accepts, args.warm, args.schema), args.top), flush=True)
        if not args.no_floor:
            print(report("floor (bench/floors_pg.py, plain writes)", floor(server, Path(work), args.accepts, args.warm),
                         args.top), flush=True)


if __name__ == "__main__":
    main()
