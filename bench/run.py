"""Cabinet's benchmark: each hot path as a ratio against a ceiling measured in the same run.

    ./bench/run.sh                         every path, SQLite, 3 rounds
    ./bench/run.sh --only link_get,accept  some paths
    ./bench/run.sh --postgres URL          on a PostgreSQL server (a maintenance DB URL)
    ./bench/run.sh --big                   also the 100k client list, the 1M-row roster and the pages
    ./bench/run.sh --only pages            the roster and client pages at 100k clients (p99 < 50 ms)
    ./bench/run.sh --only floor            the floors (bench/floors.py): a minimal Python link GET and
                                           accept, against the same ceilings (with --postgres, on it:
                                           bench/floors_pg.py)
    ./bench/run.sh --only link_get,accept,floor   also Cabinet's ratio as a fraction of the floor's

The server under test (Cabinet or the ceiling) is pinned to core 0 and the load
generator to core 1; rounds alternate A/B so drift in the machine's speed hits
both sides alike. The ratio column is the median of each round's
Cabinet/ceiling ratio, with the spread over rounds. Nothing here asserts a time:
the figures are for people (README shows the latest table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import psycopg
from sqlalchemy import Engine, create_engine, make_url

from bench import floors, floors_pg, pages, seed
from bench.instance import LOAD_CPU, SERVER_CPU, Ceiling, Instance, pinned, wait_until
from bench.stats import median, spread

HERE = Path(__file__).resolve().parent


@dataclass
class Sample:
    rate: float
    p50: float
    p99: float
    errors: int = 0
    count: int = 0  # requests answered
    cpu_ms: float = 0.0  # the server's CPU (every thread) per request, when measured (``on_cpu``)
    db_cpu_ms: float = 0.0  # on PostgreSQL, its backends' CPU per request (``Backends``), when measured


def _cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid`` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Backends:
    """The CPU of the PostgreSQL backends serving one database: separate processes of the server (on
    this machine), not counted in the server under test's CPU. Summed over the backends connected
    before and after a round (``cpu`` is a snapshot): a backend that exits during the round is missed,
    one that starts is counted from its start; the server's shared processes (WAL writer,
    checkpointer) are left out — other databases on the shared server use them too."""

    def __init__(self, maintenance_url: str, database_url: str) -> None:
        self._maintenance = floors_pg.psycopg_url(maintenance_url)
        self._name = make_url(database_url).database

    def cpu(self) -> dict[int, float]:
        with psycopg.connect(self._maintenance, autocommit=True) as connection:
            pids = [row[0] for row in connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'", (self._name,))]
        seen = {}
        for pid in pids:
            try:
                seen[pid] = _cpu_seconds(pid)
            except OSError:  # gone since
                pass
        return seen

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def backends(dbs: Databases, database_url: str) -> Backends | None:
    return Backends(dbs.postgres, database_url) if dbs.postgres and database_url else None


def on_cpu(pid: int, run: Callable[[int], Sample], db: Backends | None = None) -> Callable[[int], Sample]:
    """``run`` with the server's CPU per request noted in its sample: steadier than a rate when other
    work shares the machine (the rate counts the time the server waited for a core; CPU time does not);
    with ``db``, also its PostgreSQL backends' CPU per request."""
    def measured(r: int) -> Sample:
        before = _cpu_seconds(pid)
        db_before = db.cpu() if db else {}
        sample = run(r)
        if sample.count:
            sample.cpu_ms = (_cpu_seconds(pid) - before) * 1000 / sample.count
            if db:
                sample.db_cpu_ms = Backends.spent(db_before, db.cpu()) * 1000 / sample.count
        return sample
    return measured


@dataclass
class Row:
    path: str
    unit: str
    budget: float | None
    cabinet: list[Sample] = field(default_factory=list)
    ceiling: list[Sample] = field(default_factory=list)
    note: str = ""
    name: str = ""  # the path's name, for comparing Cabinet's row with its floor's (``report``)

    def ratios(self) -> list[float]:
        return [c.rate / b.rate for c, b in zip(self.cabinet, self.ceiling) if b.rate]


class Databases:
    """A fresh database per instance: SQLite in its folder, or one on a PostgreSQL server, dropped by
    ``drop_all`` at the end (a bench run used to leave a database per path behind)."""

    def __init__(self, postgres: str | None) -> None:
        self.postgres = postgres
        self.count = 0
        self.created: list[str] = []

    def new(self) -> str:
        if not self.postgres:
            return ""
        self.count += 1
        name = f"cabinet_bench_{int(time.time())}_{self.count}"
        engine = create_engine(self.postgres, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        self.created.append(name)
        return make_url(self.postgres).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        """Drop every database this run created (WITH (FORCE): an instance that did not stop cleanly
        may still hold a connection)."""
        if not self.created:
            return
        engine = create_engine(self.postgres, isolation_level="AUTOCOMMIT")  # type: ignore[arg-type]
        try:
            with engine.connect() as conn:
                while self.created:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.created[-1]}" WITH (FORCE)')
                    self.created.pop()
        finally:
            engine.dispose()


# --- wrk -------------------------------------------------------------------

def _ms(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(base_url: str, requests_file: Path, connections: int, duration: float) -> Sample:
    env = {"BENCH_REQUESTS": str(requests_file), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--latency", "--timeout", "30s",
                          "-s", str(HERE / "requests.lua"), base_url]),
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: the thread stats' "+/- Stdev" column (e.g. "68.50%") also ends in "50%".
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Sample(rate, p50, p99, int(bad.group(1)) if bad else 0 + (1 if errors else 0), count)


def httpload(base_url: str, requests_file: Path, connections: int, times: Path | None = None) -> Sample:
    """Each request of the file exactly once (an accept per invitation), over keep-alive connections;
    ``times``: where each request's send and answer times go (``bench.httpload``)."""
    out = subprocess.run(
        pinned(LOAD_CPU, [sys.executable, "-m", "bench.httpload", base_url, str(requests_file), str(connections),
                          *([str(times)] if times else [])]),
        capture_output=True, text=True, check=True,
    ).stdout
    result = json.loads(out)
    errors = sum(v for k, v in result["codes"].items() if not k.startswith(("2", "3")))
    return Sample(result["rate"], result["p50"] * 1000, result["p99"] * 1000, errors, result["count"])


def write_requests(path: Path, lines: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")
    return path


# --- the paths ---------------------------------------------------------------

def alternate(rounds: int, row: Row, run_cabinet: Callable[[int], Sample], run_ceiling: Callable[[int], Sample]) -> None:
    for r in range(rounds):
        order = [("cabinet", run_cabinet), ("ceiling", run_ceiling)]
        if r % 2:
            order.reverse()
        for side, run in order:
            sample = run(r)
            getattr(row, side).append(sample)
            label = "floor" if side == "cabinet" and row.name.startswith("floor") else side
            print(f"  {row.path} round {r + 1} {label}: {sample.rate:.1f} {row.unit}, p50 {sample.p50:.1f} ms, "
                  f"p99 {sample.p99:.1f} ms, errors {sample.errors}"
                  + (f", server CPU {sample.cpu_ms:.3f} ms per request" if sample.cpu_ms else "")
                  + (f", PostgreSQL backends' CPU {sample.db_cpu_ms:.3f} ms" if sample.db_cpu_ms else ""), flush=True)


def link_get(work: Path, dbs: Databases, args: argparse.Namespace) -> Row:
    row = Row("link GET (wrk, 32 connections, 1,000 links)", "req/s", 0.4, name="link_get")
    database = dbs.new()
    inst = Instance(work / "links", database)
    inst.cli("init")
    seeded = seed.seed_invitations(inst.config, 1000)
    inst.start()
    try:
        size = len(httpx.get(inst.base_url + seeded.invitation_paths[0]).content)
        args.page_size = args.page_size or size  # the floor's page, when it runs next
        requests = write_requests(work / "links.txt", [("GET", p, "", "") for p in seeded.invitation_paths])
        ceiling = Ceiling(work, "static", str(size))
        try:
            assert inst.process is not None
            alternate(args.rounds, row, on_cpu(inst.process.pid, lambda r: wrk(inst.base_url, requests, 32, args.duration),
                                               backends(dbs, database)),
                      on_cpu(ceiling.process.pid,
                             lambda r: wrk(f"http://127.0.0.1:{ceiling.port}", requests, 32, args.duration)))
        finally:
            ceiling.stop()
        row.note = f"page {size} bytes; RSS {inst.rss_mb():.0f} MB"
    finally:
        inst.stop()
    return row


def _signed_in(base_url: str) -> tuple[str, str]:
    """Cookie header and CSRF token of a signed-in accountant."""
    with httpx.Client(base_url=base_url, headers={"Origin": base_url, "Sec-Fetch-Site": "same-origin"}) as client:
        page = client.get("/sign-in").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        answer = client.post("/sign-in", data={"csrf_token": csrf, "email": seed.ACCOUNTANT, "password": seed.PASSWORD,
                                                "next": "/"})
        if answer.status_code not in (302, 303):
            raise RuntimeError(f"sign-in answered {answer.status_code}")
        page = client.get("/").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        return cookie, csrf


@dataclass
class EmailsOut:
    """An accept round's emails, waited for before the next round: the ceiling runs on the same core,
    so it must not run while the server under test still composes and sends the round's emails (it
    did before 1 December 2026 for Cabinet's accept, whose ceiling then measured 6,600–8,500 POSTs/s
    against 16,500–18,500 on a quiet core, doubling Cabinet's ratio). The round's rate and CPU are
    the 303s'; the emails' time and CPU are noted apart, as "with the emails out"."""

    drains: list[float] = field(default_factory=list)  # seconds from the last 303 until every email is out
    overall: list[float] = field(default_factory=list)  # accepts / (round + drain)
    whole_cpu: list[float] = field(default_factory=list)  # server CPU per accept until its emails are out
    cold: Sample | None = None  # the warm-up's accepts (``warm_up``), noted apart

    def warm_up(self, url: str, requests: Path, out: Callable[[], bool], what: str) -> None:
        """``WARM_ACCEPTS`` accepts before the rounds, their emails out too, measured apart (``cold``): the
        rounds then measure the server's steady state, as the ceiling's (wrk, for a duration) is. A cold
        server's first accepts wait for its statements' compiling, its pool's connections and its threads'
        start; in rounds of 300 accepts they made round 1's p99 (on PostgreSQL: the first 16 accepts,
        one per connection, 80-250 ms, 3 December 2026)."""
        self.cold = httpload(url, requests, 16)
        wait_until(out, 600, what)

    def round(self, pid: int, url: str, requests: Path, count: int, out: Callable[[], bool], what: str,
              times: Path | None = None, db: Backends | None = None) -> Sample:
        before = _cpu_seconds(pid)
        db_before = db.cpu() if db else {}
        sample = httpload(url, requests, 16, times)
        sample.cpu_ms = (_cpu_seconds(pid) - before) * 1000 / max(sample.count, 1)
        if db:  # the 303s' statements; the emails' come after
            sample.db_cpu_ms = Backends.spent(db_before, db.cpu()) * 1000 / max(sample.count, 1)
        ended = time.perf_counter()
        wait_until(out, 600, what)
        self.drains.append(time.perf_counter() - ended)
        self.whole_cpu.append((_cpu_seconds(pid) - before) * 1000 / count)
        self.overall.append(count / (count / sample.rate + self.drains[-1]))
        return sample

    def note(self, row: Row) -> str:
        ratios = [o / c.rate for o, c in zip(self.overall, row.ceiling) if c.rate]
        cold = (f"; a cold server's first {self.cold.count} accepts (the warm-up, not in the rounds): p50 "
                f"{self.cold.p50:.1f} / p99 {self.cold.p99:.1f} ms") if self.cold else ""
        return (f"every email out {median(self.drains):.2f} s after the last 303; with the emails out "
                f"{median(self.overall):.1f} accepts/s = {median(ratios):.3f} ({spread(ratios)}) of the ceiling, "
                f"server CPU {median(self.whole_cpu):.3f} ms per accept with its emails{cold}")


#: Accepts sent before the measured rounds, on invitations of their own (``EmailsOut.warm_up``).
WARM_ACCEPTS = 100


def _emails_waiting(engine: Engine) -> int:
    """Emails Cabinet has queued and not sent yet, read from its database (by the bench, on the load's core)."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM outbox WHERE state = 'pending'").scalar_one())


def accept(work: Path, dbs: Databases, args: argparse.Namespace) -> Row:
    row = Row("accept POST (own invitation, signed in, CSRF)", "accepts/s", 0.2, name="accept")
    per_round = args.accepts
    database = dbs.new()
    inst = Instance(work / "accept", database)
    inst.cli("init")
    seeded = seed.seed_invitations(inst.config, WARM_ACCEPTS + per_round * args.rounds)
    warm, measured = seeded.invitation_paths[:WARM_ACCEPTS], seeded.invitation_paths[WARM_ACCEPTS:]
    engine = create_engine(database or f"sqlite:///{inst.root / 'data' / 'cabinet.sqlite3'}")
    emails = EmailsOut()
    inst.start()
    try:
        cookie, csrf = _signed_in(inst.base_url)
        body = f"csrf_token={csrf}"
        emails.warm_up(inst.base_url, write_requests(work / "accept-warm.txt", [("POST", p + "/accept", body, cookie) for p in warm]),
                       lambda: _emails_waiting(engine) == 0, "Cabinet's emails of the warm-up")
        ceiling = Ceiling(work, "post")
        try:
            def run_cabinet(r: int) -> Sample:
                paths = measured[r * per_round:(r + 1) * per_round]
                requests = write_requests(work / f"accept-{r}.txt", [("POST", p + "/accept", body, cookie) for p in paths])
                assert inst.process is not None
                sample = emails.round(inst.process.pid, inst.base_url, requests, per_round,
                                      lambda: _emails_waiting(engine) == 0, "Cabinet's emails of the round",
                                      args.times and args.times / f"accept-{r}.tsv", backends(dbs, database))
                print(f"  accept round {r + 1}: every email sent {emails.drains[-1]:.2f} s after the last 303 "
                      f"({emails.overall[-1]:.1f} accepts/s with their emails out)", flush=True)
                return sample

            def run_ceiling(r: int) -> Sample:
                paths = measured[r * per_round:(r + 1) * per_round]
                requests = write_requests(work / f"accept-c{r}.txt", [("POST", p + "/accept", body, cookie) for p in paths])
                return wrk(f"http://127.0.0.1:{ceiling.port}", requests, 16, args.duration)

            alternate(args.rounds, row, run_cabinet, on_cpu(ceiling.process.pid, run_ceiling))
        finally:
            ceiling.stop()
    finally:
        inst.stop()
        engine.dispose()
    row.note = emails.note(row)
    return row


def _cabinet_page_size(work: Path, dbs: Databases) -> int:
    """The size of Cabinet's invitation page as a new visitor gets it (for the floor's page)."""
    inst = Instance(work / "page-size", dbs.new())
    inst.cli("init")
    seeded = seed.seed_invitations(inst.config, 1)
    inst.start()
    try:
        return len(httpx.get(inst.base_url + seeded.invitation_paths[0]).content)
    finally:
        inst.stop()


def _count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def floor(work: Path, dbs: Databases, args: argparse.Namespace) -> list[Row]:
    """The floors (``bench/floors.py``) against the same ceilings, with the same load, pinning and
    alternation as ``link_get`` and ``accept``; on SQLite, or on the PostgreSQL server (``--postgres``:
    ``bench/floors_pg.py``, reading and writing as ``--floor-read`` and ``--floor-write`` say)."""
    size = args.page_size or _cabinet_page_size(work, dbs)
    return [_floor_get(work, dbs, args, size),
            _floor_accept(work, dbs, args, "direct", "floor_accept", "emails written as bytes"),
            _floor_accept(work, dbs, args, "email-package", "floor_accept_email", "emails by EmailMessage")]


def _floor_get(work: Path, dbs: Databases, args: argparse.Namespace, size: int) -> Row:
    """The GET floor, its page ``size`` bytes."""
    get_row = Row("floor: link GET (wrk, 32 connections, 1,000 links)", "req/s", 0.4, name="floor_get")
    database = dbs.new()
    links = floors.seed(work / "floor-get", 1000, database)
    requests = write_requests(work / "floor-links.txt", [("GET", p, "", "") for p in links.paths])
    server = Ceiling(work, "get", str(work / "floor-get"), str(size), *([args.floor_read] if database else []),
                     module="bench.floors")
    try:
        ceiling = Ceiling(work, "static", str(size))
        try:
            alternate(args.rounds, get_row,
                      on_cpu(server.process.pid,
                             lambda r: wrk(f"http://127.0.0.1:{server.port}", requests, 32, args.duration),
                             backends(dbs, database)),
                      on_cpu(ceiling.process.pid,
                             lambda r: wrk(f"http://127.0.0.1:{ceiling.port}", requests, 32, args.duration)))
        finally:
            ceiling.stop()
    finally:
        server.stop()
    get_row.note = f"page {size} bytes (Cabinet's)" + (f"; row read {args.floor_read}" if database else "")
    return get_row


def _floor_accept(work: Path, dbs: Databases, args: argparse.Namespace, composer: str, name: str, label: str) -> Row:
    """The accept floor, its emails composed by ``composer`` (``bench.floors.COMPOSERS``)."""
    per_round = args.accepts
    accept_row = Row(f"floor: accept POST (own invitation, signed in, CSRF, 2 emails sent; {label})", "accepts/s", 0.2,
                     name=name)
    folder = work / f"floor-accept-{composer}"
    database = dbs.new()
    db = backends(dbs, database)
    seeded = floors.seed(folder, WARM_ACCEPTS + per_round * args.rounds, database)
    warm, measured = seeded.paths[:WARM_ACCEPTS], seeded.paths[WARM_ACCEPTS:]
    count_file = work / f"floor-sink-{composer}.count"
    sink = Ceiling(work, "sink", str(count_file), cpu=LOAD_CPU)
    server = Ceiling(work, "accept", str(folder), str(sink.port), composer, *([args.floor_write] if database else []),
                     module="bench.floors")
    emails = EmailsOut()
    body = f"csrf_token={seeded.csrf}"
    try:
        emails.warm_up(f"http://127.0.0.1:{server.port}",
                       write_requests(work / f"floor-accept-{composer}-warm.txt",
                                      [("POST", p + "/accept", body, seeded.cookie) for p in warm]),
                       lambda: _count(count_file) >= 2 * len(warm), "the floor's emails of the warm-up")
        ceiling = Ceiling(work, "post")
        try:
            def run_floor(r: int) -> Sample:
                paths = measured[r * per_round:(r + 1) * per_round]
                requests = write_requests(work / f"floor-accept-{composer}-{r}.txt",
                                          [("POST", p + "/accept", body, seeded.cookie) for p in paths])
                sample = emails.round(server.process.pid, f"http://127.0.0.1:{server.port}", requests, per_round,
                                      lambda: _count(count_file) >= 2 * (len(warm) + per_round * (r + 1)), "the floor's emails",
                                      db=db)
                print(f"  floor accept ({label}) round {r + 1}: every email sent {emails.drains[-1]:.2f} s after the "
                      f"last 303 ({emails.overall[-1]:.1f} accepts/s with their emails out)", flush=True)
                return sample

            def run_ceiling(r: int) -> Sample:
                paths = measured[r * per_round:(r + 1) * per_round]
                requests = write_requests(work / f"floor-accept-{composer}-c{r}.txt",
                                          [("POST", p + "/accept", body, seeded.cookie) for p in paths])
                return wrk(f"http://127.0.0.1:{ceiling.port}", requests, 16, args.duration)

            alternate(args.rounds, accept_row, run_floor, on_cpu(ceiling.process.pid, run_ceiling))
        finally:
            ceiling.stop()
    finally:
        server.stop()
        sink.stop()
    accept_row.note = emails.note(accept_row) + (f"; written {args.floor_write}" if database else "")
    return accept_row


def _smtpload(port: int, jobs: list[dict[str, str]], work: Path, name: str) -> Sample:
    jobs_file = work / f"{name}.json"
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    out = subprocess.run(
        pinned(LOAD_CPU, [sys.executable, "-m", "bench.smtpload", "127.0.0.1", str(port), str(jobs_file), "8"]),
        capture_output=True, text=True, check=True,
    ).stdout
    result = json.loads(out)
    errors = sum(v for k, v in result["codes"].items() if k != "250")
    # count: the messages answered 250 (stored, for Cabinet), what CPU per message divides by.
    return Sample(result["rate"], result["p50"] * 1000, result["p99"] * 1000, errors, result["codes"].get("250", 0))


@dataclass
class Drain:
    backlog: int  # messages stored but not yet processed when the burst ended
    seconds: float  # from the burst's end until none is left
    rate: float  # backlog / seconds: how fast processing works through it once SMTP is quiet
    overall: float  # messages / (burst + drain): processed throughput end to end


def _backlog(engine: Engine) -> int:
    """Stored inbound messages not yet processed, read from Cabinet's database."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM inbound WHERE state = 'received'").scalar_one())


def _drain(engine: Engine, messages: int, burst: Sample, burst_started: float, burst_ended: float) -> Drain:
    """After a burst: the backlog it left and how fast processing empties it (wall clock, polled)."""
    left = _backlog(engine)
    wait_until(lambda: _backlog(engine) == 0, 1800, "the inbound backlog to drain")
    done = time.perf_counter()
    drain_rate = left / (done - burst_ended) if left else burst.rate  # nothing left: processing kept up
    return Drain(left, done - burst_ended, drain_rate, messages / (done - burst_started))


def inbound(work: Path, dbs: Databases, args: argparse.Namespace) -> Row:
    row = Row("inbound SMTP (8 connections, 3–8 KB replies, stored before 250)", "msg/s", 0.6)
    database = dbs.new()
    inst = Instance(work / "inbound", database)
    inst.cli("init")
    seeded = seed.seed_invitations(inst.config, 200)
    jobs = seed.reply_jobs(seeded, args.messages * args.rounds)
    engine = create_engine(database or f"sqlite:///{inst.root / 'data' / 'cabinet.sqlite3'}")
    drains: list[Drain] = []
    inst.start()
    try:
        ceiling = Ceiling(work, "smtp")
        assert inst.process is not None
        # The server's CPU per stored message over the burst only (``on_cpu``), not the drain after it;
        # processing's batches that run during the burst (``Arrivals``' max_wait) are in it.
        burst = on_cpu(inst.process.pid, lambda r: _smtpload(inst.smtp_port, jobs[r * args.messages:(r + 1) * args.messages],
                                                             work, f"in-{r}"), backends(dbs, database))

        def run_cabinet(r: int) -> Sample:
            started = time.perf_counter()
            sample = burst(r)
            drain = _drain(engine, args.messages, sample, started, time.perf_counter())
            drains.append(drain)
            # Whatever the replies queued (forwards, notices) sent before the ceiling's round, which would
            # otherwise share the core with it (``EmailsOut``).
            wait_until(lambda: _emails_waiting(engine) == 0, 600, "the emails the replies queued")
            print(f"  inbound round {r + 1} drain: backlog {drain.backlog} after the burst, empty "
                  f"{drain.seconds:.1f} s later ({drain.rate:.1f} msg/s); all processed at {drain.overall:.1f} msg/s",
                  flush=True)
            return sample

        try:
            alternate(
                args.rounds, row, run_cabinet,
                on_cpu(ceiling.process.pid,
                       lambda r: _smtpload(ceiling.port, jobs[r * args.messages:(r + 1) * args.messages], work, f"in-c{r}")),
            )
        finally:
            ceiling.stop()
    finally:
        inst.stop()
        engine.dispose()
    ceilings = [s.rate for s in row.ceiling]
    drain_ratios = [d.rate / c for d, c in zip(drains, ceilings) if c]
    row.note = (f"backlog after the burst {median([d.backlog for d in drains]):.0f} of {args.messages}, drains at "
                f"{median([d.rate for d in drains]):.1f} msg/s = {median(drain_ratios):.3f} ({spread(drain_ratios)}) "
                f"of the ceiling (budget ≥ 0.3); all processed at {median([d.overall for d in drains]):.1f} msg/s")
    return row


def _cpu_per(result: dict[str, float]) -> float:
    """The sending process's CPU per email in ms (``bench.outbound`` measures it around its sends only: the
    start-up, seeding and the relay's own work are left out), as ``on_cpu`` notes it for a server."""
    return result["cpu"] * 1000 / result["count"] if result["count"] else 0.0


def outbound(work: Path, dbs: Databases, args: argparse.Namespace) -> Row:
    row = Row(f"outbound ({args.emails:,} queued invitations to an SMTP relay)", "emails/s", 0.8)
    count_file = work / "sink.count"
    saved = work / "sent"
    saved.mkdir()
    sink = Ceiling(work, "sink", str(count_file), str(saved), cpu=LOAD_CPU)
    template = work / "outbound-template"
    try:
        # One seeded instance, copied for each round, so each round sends the same queue.
        database = dbs.new()
        inst = Instance(template, database, relay_port=sink.port)
        inst.cli("init")
        seed.seed_invitations(inst.config, args.emails)

        def run_cabinet(r: int) -> Sample:
            if database:  # PostgreSQL: one queue per round means one seeding per round
                if r:
                    fresh = Instance(work / f"outbound-{r}", dbs.new(), relay_port=sink.port)
                    fresh.cli("init")
                    seed.seed_invitations(fresh.config, args.emails)
                    config = fresh.config
                else:
                    config = inst.config
            else:
                copy = work / f"outbound-{r}"
                shutil.copytree(template, copy)
                config = copy / "cabinet.toml"
            out = subprocess.run(pinned(SERVER_CPU, [sys.executable, "-m", "bench.outbound", "cabinet", str(config)]),
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            return Sample(result["count"] / result["elapsed"], 0.0, 0.0, args.emails - result["count"], result["count"],
                          _cpu_per(result))

        def run_raw(r: int) -> Sample:
            wait_until(lambda: len(list(saved.glob("*.eml"))) >= args.emails, 600, "the first Cabinet round's emails")
            out = subprocess.run(
                pinned(SERVER_CPU, [sys.executable, "-m", "bench.outbound", "raw", "127.0.0.1", str(sink.port), str(saved),
                                    str(args.emails)]),
                capture_output=True, text=True, check=True,
            ).stdout
            result = json.loads(out)
            return Sample(result["count"] / result["elapsed"], 0.0, 0.0, 0, result["count"], _cpu_per(result))

        for r in range(args.rounds):  # Cabinet first: its first round records the bytes the raw sender replays
            for side, run in [("cabinet", run_cabinet), ("ceiling", run_raw)]:
                sample = run(r)
                getattr(row, side).append(sample)
                print(f"  outbound round {r + 1} {side}: {sample.rate:.1f} emails/s, errors {sample.errors}, "
                      f"sender CPU {sample.cpu_ms:.3f} ms per email", flush=True)
    finally:
        sink.stop()
    return row


def client_list(work: Path, dbs: Databases, args: argparse.Namespace) -> Row:
    row = Row(f"`cabinet client list --firm X --json` at {args.clients:,} clients", "s", None)
    inst = Instance(work / "clients", dbs.new())
    inst.cli("init")
    seed.seed_invitations(inst.config, 1)
    seed.bulk_clients(inst.config, args.clients)
    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        subprocess.run(pinned(SERVER_CPU, [str(Path(sys.executable).parent / "cabinet"), "--config", str(inst.config),
                                           "client", "list", "--firm", seed.FIRM, "--json"]),
                       stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    row.note = f"median {median(times):.2f} s over {len(times)} runs (budget < 2 s)"
    row.cabinet = [Sample(t, 0, 0) for t in times]
    return row


def big_roster(work: Path, dbs: Databases, args: argparse.Namespace) -> Row:
    row = Row(f"link GET p99 with {args.big_rows:,} roster rows vs 1,000", "req/s", None)
    inst = Instance(work / "big", dbs.new())
    inst.cli("init")
    seeded = seed.seed_invitations(inst.config, 1000)
    requests = write_requests(work / "big.txt", [("GET", p, "", "") for p in seeded.invitation_paths])
    inst.start()
    small = [wrk(inst.base_url, requests, 32, args.duration) for _ in range(args.rounds)]
    inst.stop()
    seed.bulk_clients(inst.config, args.big_rows)
    inst.start()
    large = [wrk(inst.base_url, requests, 32, args.duration) for _ in range(args.rounds)]
    rss = inst.rss_mb()
    inst.stop()
    row.cabinet, row.ceiling = large, small
    p99_ratio = median([s.p99 for s in large]) / max(median([s.p99 for s in small]), 1e-9)
    row.note = f"p99 {p99_ratio:.2f}× of 1k (budget ≤ 1.2×); RSS {rss:.0f} MB (budget ≤ 150 MB)"
    return row


PATHS: dict[str, Callable[[Path, Databases, argparse.Namespace], Row]] = {
    "link_get": link_get,
    "accept": accept,
    "inbound": inbound,
    "outbound": outbound,
}
BIG_PATHS = {"client_list": client_list, "big_roster": big_roster, "pages": pages.pages}
# Not in the default run (``--only floor``): they measure what Python could reach, not Cabinet.
EXTRA_PATHS: dict[str, Callable[[Path, Databases, argparse.Namespace], list[Row]]] = {"floor": floor}
# Cabinet's row and its floors', compared when both ran (``report``).
FLOORS = [("link_get", "floor_get"), ("accept", "floor_accept"), ("accept", "floor_accept_email")]


def report(rows: list[Row], database: str) -> str:
    lines = [
        f"Database: {database}. Server pinned to core {SERVER_CPU}, load to core {LOAD_CPU}.",
        "",
        "| path | Cabinet (median) | ceiling (median) | ratio (median, spread) | budget | Cabinet p50 / p99 | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row.budget is None:
            lines.append(f"| {row.path} | | | | | | {row.note} |")
            continue
        ratios = row.ratios()
        cab = median([s.rate for s in row.cabinet])
        ceil = median([s.rate for s in row.ceiling])
        p50 = median([s.p50 for s in row.cabinet])
        p99 = median([s.p99 for s in row.cabinet])
        errors = sum(s.errors for s in row.cabinet)
        note = row.note + (f"; {errors} errors" if errors else "")
        if all(s.cpu_ms for s in row.cabinet + row.ceiling):
            cpu = [b.cpu_ms / c.cpu_ms for c, b in zip(row.cabinet, row.ceiling)]
            note += ("; " if note else "") + (f"server CPU per request {median([s.cpu_ms for s in row.cabinet]):.3f} ms (ceiling "
                     f"{median([s.cpu_ms for s in row.ceiling]):.3f}): ratio by CPU {median(cpu):.3f} ({spread(cpu)})")
        if all(s.db_cpu_ms for s in row.cabinet):
            note += f"; PostgreSQL backends' CPU per request {median([s.db_cpu_ms for s in row.cabinet]):.3f} ms (not in the above)"
        lines.append(
            f"| {row.path} | {cab:,.1f} {row.unit} | {ceil:,.1f} {row.unit} | {median(ratios):.3f} ({spread(ratios)}) "
            f"| ≥ {row.budget} | {p50:.1f} / {p99:.1f} ms | {note} |"
        )
    named = {row.name: row for row in rows if row.name}
    for product, floor_name in FLOORS:
        if product in named and floor_name in named:
            reached, possible = median(named[product].ratios()), median(named[floor_name].ratios())
            if possible:
                line = f"\n{product}: Cabinet's ratio {reached:.3f} is {reached / possible:.2f} of {floor_name}'s {possible:.3f}"
                cabinet_cpu = median([s.cpu_ms for s in named[product].cabinet])
                floor_cpu = median([s.cpu_ms for s in named[floor_name].cabinet])
                if cabinet_cpu and floor_cpu:
                    line += f"; server CPU per request {cabinet_cpu:.3f} ms against the floor's {floor_cpu:.3f} ({floor_cpu / cabinet_cpu:.2f})"
                cabinet_db = median([s.db_cpu_ms for s in named[product].cabinet])
                floor_db = median([s.db_cpu_ms for s in named[floor_name].cabinet])
                if cabinet_db and floor_db:
                    line += f"; PostgreSQL backends' CPU per request {cabinet_db:.3f} ms against the floor's {floor_db:.3f}"
                lines.append(line + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated paths: " + ", ".join([*PATHS, *BIG_PATHS, *EXTRA_PATHS]))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk round")
    parser.add_argument("--accepts", type=int, default=300, help="accepts per round")
    parser.add_argument("--messages", type=int, default=1000, help="inbound messages per round")
    parser.add_argument("--emails", type=int, default=2000, help="queued emails per outbound round")
    parser.add_argument("--clients", type=int, default=100_000, help="roster size for client_list and pages")
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="roster rows for big_roster")
    parser.add_argument("--big", action="store_true", help="also run client_list and big_roster")
    parser.add_argument("--postgres", help="maintenance database URL of a PostgreSQL server to run on")
    parser.add_argument("--page-size", type=int, default=0,
                        help="the floor's page size (default: Cabinet's invitation page, measured)")
    parser.add_argument("--floor-read", choices=floors_pg.READ_MODES, default="thread",
                        help="on PostgreSQL, how the GET floor reads its row (bench/floors_pg.py)")
    parser.add_argument("--floor-write", choices=floors_pg.WRITE_MODES, default="plain",
                        help="on PostgreSQL, how the accept floor writes its transactions (bench/floors_pg.py)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--times", type=Path, help="a folder for each accept round's per-request times "
                        "(bench.httpload's TIMES.tsv: accept-R.tsv)")
    args = parser.parse_args(argv)
    chosen: dict[str, Callable[[Path, Databases, argparse.Namespace], Row | list[Row]]] = dict(PATHS)
    if args.big:
        chosen.update(BIG_PATHS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        every = {**PATHS, **BIG_PATHS, **EXTRA_PATHS}
        unknown = [n for n in names if n not in every]
        if unknown:
            parser.error(f"unknown path(s): {', '.join(unknown)}")
        chosen = {n: every[n] for n in names}
    if args.times:
        args.times.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cabinet-bench-"))
    dbs = Databases(args.postgres)
    rows = []
    try:
        for name, path in chosen.items():
            print(f"== {name}", flush=True)
            made = path(work, dbs, args)
            rows.extend(made if isinstance(made, list) else [made])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            dbs.drop_all()
        else:
            print(f"work folder kept: {work}")
            if dbs.created:
                print(f"PostgreSQL databases kept: {', '.join(dbs.created)}")
    print()
    print(report(rows, "PostgreSQL" if args.postgres else "SQLite (embedded default)"))


if __name__ == "__main__":
    main()
