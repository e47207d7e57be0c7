"""Cabinet's fault run: each fault against a real `cabinet serve`, and what came through.

    ./bench/faults.sh                          every scenario (about 10 minutes)
    ./bench/faults.sh --only relay,kill        some scenarios: relay, kill, postgres, disk
    ./bench/faults.sh --relay-outage 3600      the relay down for an hour (the issue's long outage)
    ./bench/faults.sh --help                   every option

Each scenario starts its own instance (bench.instance) on loopback, puts load
on it, causes the fault, lets it end, waits for the instance to catch up and
then counts, from the database and from what the receiving side got:

- **relay**: the relay Cabinet sends to is down, then answers 451, then 250,
  and refuses one recipient with 550. A remote MTA is outside the project, so
  the relay is an aiosmtpd server this script controls (``Relay``).
- **kill**: `cabinet serve` is SIGKILLed several times while SMTP clients send
  replies to real ``reply+`` addresses; a client sends again what got no 250,
  as an MTA would.
- **postgres**: the same inbound load on a PostgreSQL cluster this script
  starts (as scripts/test.sh does), restarted twice under the load.
- **disk**: the data folder (SQLite and Maildir) on a small tmpfs that is
  filled up under the load, then freed (root only).

The figures are for people (README's crash section shows the latest run):
"sent once per Message-ID", lost, doubled, "recovered in N s" (from the end
of the fault to the instance being ready again and its backlog delivered).
Nothing here waits for a fixed time except the faults themselves.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any, Callable

import httpx
from sqlalchemy import create_engine, make_url, text

from bench import seed
from bench.instance import Instance, free_port, wait_until
from daemon.config import load_config

WAIT = 900.0  # seconds any one condition may take on a loaded machine before the run says so


# --- the instance ------------------------------------------------------------------


def configure(inst: Instance, mail: str = "") -> None:
    """Faster outbox passes than production's default, so a recovery is measured, not a poll interval."""
    config = inst.config.read_text(encoding="utf-8").replace("[mail]\n", f"[mail]\npoll_interval = 1\n{mail}", 1)
    inst.config.write_text(config, encoding="utf-8")  # /metrics: bench.instance gives it its own port


def query(inst: Instance, sql: str) -> list[Any]:
    engine = create_engine(load_config(inst.config).database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def ready(inst: Instance) -> bool:
    try:
        return httpx.get(f"{inst.base_url}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def kill(inst: Instance) -> None:
    assert inst.process is not None
    inst.process.send_signal(signal.SIGKILL)
    inst.process.wait()
    inst.process = None


# --- the relay (outside the project: a stand-in) -------------------------------------


class Relay:
    """An SMTP relay this script controls: down, 451 to everything, or 250 except 550 to ``refused``."""

    def __init__(self, refused: set[str]) -> None:
        self.port = free_port()
        self.refused = refused
        self.mode = "ok"  # "ok" | "451"
        self.received: Counter[str] = Counter()  # Message-ID -> deliveries
        self.arrived_at: dict[str, float] = {}
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.mode == "451":
            answer = "451 4.3.0 Try again later"
        elif address.lower() in self.refused:
            answer = "550 5.1.1 User unknown"
        else:
            envelope.rcpt_tos.append(address)
            answer = "250 2.1.5 OK"
        with self._lock:
            self.answers[answer[:3]] += 1
        return answer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # A long Message-ID is folded onto its own line: the ID is what is left without the whitespace.
        message_id = "".join(str(message_from_bytes(envelope.original_content or b"")["Message-ID"]).split())
        with self._lock:
            self.received[message_id] += 1
            self.arrived_at.setdefault(message_id, time.monotonic())
            self.answers["250"] += 1
        return "250 2.0.0 OK"


# --- inbound load: SMTP clients that send again what got no 250 ------------------------


@dataclass
class Load:
    """Replies sent to the instance by ``threads`` clients; each job is retried until it gets a 250."""

    port: int
    jobs: list[dict[str, str]]
    threads: int = 4
    accepted: set[str] = field(default_factory=set)  # Message-IDs that got a 250
    codes: Counter[str] = field(default_factory=Counter)  # every answer to DATA (or the failure seen)
    abandoned: threading.Event = field(default_factory=threading.Event)  # the scenario failed: stop sending
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        queue = list(reversed(self.jobs))
        workers = [threading.Thread(target=self._client, args=(queue,)) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _client(self, queue: list[dict[str, str]]) -> None:
        smtp: smtplib.SMTP | None = None
        while True:
            with self._lock:
                if not queue:
                    break
                job = queue.pop()
            message_id = job["data"].split("Message-ID: ", 1)[1].split("\n", 1)[0]
            while not self.abandoned.is_set():  # as an MTA does: the same bytes again until a 250
                try:
                    if smtp is None:
                        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
                    wire = job["data"].replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
                    refused = smtp.sendmail(job["from"], [job["to"]], wire)
                    assert not refused
                    with self._lock:
                        self.codes["250"] += 1
                        self.accepted.add(message_id)
                    break
                except smtplib.SMTPResponseException as exc:
                    self._count(str(exc.smtp_code))
                    smtp = self._reset(smtp)
                    if exc.smtp_code >= 500:  # refused for good: an MTA would bounce it
                        break
                except smtplib.SMTPRecipientsRefused as exc:
                    code = next(iter(exc.recipients.values()))[0]
                    self._count(str(code))
                    smtp = self._reset(smtp)
                    if code >= 500:
                        break
                except (OSError, smtplib.SMTPException):
                    self._count("no connection")
                    smtp = self._drop(smtp)
                time.sleep(0.2)  # a sender's retry, not a measurement
        if smtp is not None:
            self._drop(smtp)

    def _count(self, code: str) -> None:
        with self._lock:
            self.codes[code] += 1

    @staticmethod
    def _reset(smtp: smtplib.SMTP | None) -> smtplib.SMTP | None:
        try:
            if smtp is not None:
                smtp.rset()
            return smtp
        except (OSError, smtplib.SMTPException):
            return Load._drop(smtp)

    @staticmethod
    def _drop(smtp: smtplib.SMTP | None) -> None:
        try:
            if smtp is not None:
                smtp.close()
        except OSError:
            pass
        return None


def unique_jobs(seeded: seed.Seeded, count: int, tag: str) -> list[dict[str, str]]:
    """``count`` replies whose Message-IDs are unique to this scenario."""
    jobs = seed.reply_jobs(seeded, count)
    for job in jobs:
        job["data"] = job["data"].replace("@bench.example>", f"@{tag}.faults.example>", 1)
    return jobs


def inbound_figures(inst: Instance, load: Load) -> dict[str, Any]:
    """After the load: each accepted Message-ID stored once, processed once, forwarded once."""
    wait_until(lambda: query(inst, "SELECT count(*) FROM inbound WHERE state = 'received'")[0][0] == 0,
               WAIT, "every stored message processed", inst.log)
    rows = query(inst, "SELECT message_id, state, kind FROM inbound")
    stored = Counter(r[0] for r in rows)
    processed = Counter(r[0] for r in rows if r[1] == "processed")
    forwards = query(inst, "SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'")[0][0]
    lost = sorted(m for m in load.accepted if stored[m] == 0)
    doubled = sum(n - 1 for n in stored.values() if n > 1) + sum(n - 1 for n in processed.values() if n > 1)
    replies = sum(1 for r in rows if r[1] == "processed" and r[2] == "reply")
    return {
        "sent": len(load.jobs), "accepted": len(load.accepted), "stored": len(stored),
        "lost": len(lost), "doubled": doubled + max(0, forwards - replies),
        "processed once": all(processed[m] == 1 for m in load.accepted),
        "forwards": forwards, "answers": dict(load.codes), "quarantined": sum(1 for r in rows if r[1] == "quarantined"),
    }


# --- the scenarios ------------------------------------------------------------------


@dataclass
class Result:
    name: str
    once: bool
    lost: int
    doubled: int
    recovered: float | None
    detail: str
    skipped: str = ""

    def line(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.skipped})"
        recovered = f"{self.recovered:.1f} s" if self.recovered is not None else "n/a"
        return (f"{self.name}: sent once per Message-ID: {'yes' if self.once else 'NO'}, lost {self.lost}, "
                f"doubled {self.doubled}, recovered in {recovered}; {self.detail}")


def relay_scenario(work: Path, args: argparse.Namespace) -> Result:
    name = f"relay down {args.relay_outage:.0f} s, then 451 for {args.relay_tempfail:.0f} s, then one 550"
    refused = "nobody@clients.faults.example"
    relay = Relay({refused})
    inst = Instance(work / "relay", relay_port=relay.port)
    configure(inst)
    inst.cli("init")
    app = seed.app_for(inst.config)
    try:
        app.roster.add_firm(seed.FIRM, "office@bench-cpa.example")
        for i in range(args.invitations):
            company = f"Relay Company {i:03d}"
            app.roster.add_company(company, f"admin{i}@relay-{i}.faults.example", admin_name=f"Admin {i}", locale="en")
            app.roster.send_invitation(company, refused if i == 0 else f"invitee{i}@clients.faults.example")
    finally:
        app.close()
    print(f"  {args.invitations} invitations queued; relay down", flush=True)
    inst.start()  # the relay is not listening: every attempt fails to connect
    try:
        time.sleep(args.relay_outage)
        relay.mode = "451"
        relay.start()
        print(f"  relay up, answering 451 at RCPT for {args.relay_tempfail:.0f} s", flush=True)
        time.sleep(args.relay_tempfail)
        relay.mode = "ok"
        healed = time.monotonic()
        print(f"  relay answering 250 (550 to {refused}); waiting for the queue to drain", flush=True)

        def drained() -> bool:
            states = query(inst, "SELECT state, count(*) FROM outbox GROUP BY state")
            return dict((s, n) for s, n in states).get("pending", 0) == 0 and len(states) > 0

        wait_until(drained, WAIT + args.relay_outage, "the outbox drained", inst.log)
        rows = query(inst, "SELECT kind, recipient, state, message_id FROM outbox")
        bounced = [r for r in query(inst, "SELECT email, state FROM invitations") if r[0] == refused]
    finally:
        inst.stop()
        relay.stop()
    sent = [r for r in rows if r[2] == "sent"]
    once = all(relay.received[r[3]] == 1 for r in sent)
    lost = sum(1 for r in rows if r[2] != "bounced" and relay.received[r[3]] == 0)
    doubled = sum(n - 1 for n in relay.received.values() if n > 1)
    told = [r for r in rows if r[0] == "invitation_bounced" and relay.received[r[3]] == 1]
    last = max(relay.arrived_at.values(), default=healed)
    detail = (f"{len(sent)} emails delivered ({len(sent) - len(told)} invitations, {len(told)} notice), relay answers {dict(relay.answers)}; the 550 invitation is "
              f"{bounced[0][1] if bounced else 'missing'}, its inviter told: {'yes' if len(told) == 1 else 'NO'}")
    return Result(name, once and len(told) == 1, lost, doubled, last - healed, detail)


def _inbound_instance(work: Path, name: str, database_url: str, replies: int) -> tuple[Instance, Load]:
    inst = Instance(work / name, database_url)
    configure(inst)
    inst.cli("init")
    seeded = seed.seed_invitations(inst.config, 20)
    load = Load(inst.smtp_port, unique_jobs(seeded, replies, name))
    return inst, load


def _run_load(inst: Instance, load: Load, fault: Callable[[], float]) -> float:
    """Start the load, cause ``fault`` (it returns when the fault ended), wait for the load to finish."""
    inst.start()
    loader = threading.Thread(target=load.run)
    loader.start()
    try:
        wait_until(lambda: len(load.accepted) >= 10, WAIT, "the first replies accepted", inst.log)
        recovered = fault()
    except BaseException:
        load.abandoned.set()
        raise
    finally:
        loader.join()
    return recovered


def kill_scenario(work: Path, args: argparse.Namespace) -> Result:
    name = f"SIGKILL of serve x{args.kills} during inbound SMTP load"
    inst, load = _inbound_instance(work, "kill", "", args.replies)

    def fault() -> float:
        worst = 0.0
        for n in range(args.kills):
            target = len(load.accepted) + max(10, args.replies // (args.kills + 2))
            wait_until(lambda: len(load.accepted) >= min(target, args.replies) or not load_running(), WAIT,
                       "replies accepted between kills", inst.log)
            kill(inst)
            killed = time.monotonic()
            print(f"  SIGKILL {n + 1} after {len(load.accepted)} accepted", flush=True)
            inst.start()
            wait_until(lambda: ready(inst), WAIT, "ready after the kill", inst.log)
            worst = max(worst, time.monotonic() - killed)
        return worst

    def load_running() -> bool:
        return len(load.accepted) < len(load.jobs)

    try:
        recovered = _run_load(inst, load, fault)
        figures = inbound_figures(inst, load)
    finally:
        inst.stop()
    return _inbound_result(name, figures, recovered, "worst time from a SIGKILL to ready again")


def _inbound_result(name: str, figures: dict[str, Any], recovered: float, what: str) -> Result:
    detail = (f"{figures['accepted']}/{figures['sent']} replies got 250 (answers {figures['answers']}), "
              f"stored {figures['stored']}, processed once: {'yes' if figures['processed once'] else 'NO'}, "
              f"forwarded {figures['forwards']}, quarantined {figures['quarantined']}; recovered = {what}")
    once = figures["processed once"] and figures["accepted"] == figures["sent"]
    return Result(name, once, figures["lost"], figures["doubled"], recovered, detail)


class Postgres:
    """A throwaway cluster, as scripts/test.sh starts one (as the `postgres` user when run as root)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="cabinet-faults-pg."))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_owner: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(self.dir, "postgres")
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C",
                 "--no-sync")
        self._ctl("start")

    def _pg(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(self.bin / program), *args], cwd=self.dir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c max_connections=100"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "120",
                 "-o", options, *extra, action)

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def url(self) -> str:
        maintenance = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        engine = create_engine(maintenance, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql('CREATE DATABASE "cabinet_faults"')
        engine.dispose()
        return make_url(maintenance).set(database="cabinet_faults").render_as_string(hide_password=False)

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def find_postgres(given: str | None) -> Path | None:
    if given:
        return Path(given)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3].split(".")[0]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_scenario(work: Path, args: argparse.Namespace) -> Result:
    name = f"PostgreSQL restarted x{args.pg_restarts} under inbound SMTP load"
    bin_dir = find_postgres(args.postgres_bin)
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        return Result(name, False, 0, 0, None, "", skipped="no PostgreSQL server binaries (pass --postgres-bin)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return Result(name, False, 0, 0, None, "", skipped="running as root without runuser")
    pg = Postgres(bin_dir)
    try:
        inst, load = _inbound_instance(work, "postgres", pg.url(), args.replies)

        def fault() -> float:
            worst = 0.0
            for n in range(args.pg_restarts):
                target = len(load.accepted) + max(10, args.replies // (args.pg_restarts + 2))
                wait_until(lambda: len(load.accepted) >= min(target, args.replies), WAIT,
                           "replies accepted between restarts", inst.log)
                pg.restart()
                back = time.monotonic()
                print(f"  PostgreSQL restarted ({n + 1}) after {len(load.accepted)} accepted", flush=True)
                wait_until(lambda: ready(inst), WAIT, "ready after the restart", inst.log)
                worst = max(worst, time.monotonic() - back)
            return worst

        try:
            recovered = _run_load(inst, load, fault)
            figures = inbound_figures(inst, load)
        finally:
            inst.stop()
    finally:
        pg.stop()
    return _inbound_result(name, figures, recovered, "worst time from the server back to Cabinet ready")


def disk_scenario(work: Path, args: argparse.Namespace) -> Result:
    name = f"disk full (data folder on a {args.disk_mb} MB tmpfs)"
    if os.geteuid() != 0:
        return Result(name, False, 0, 0, None, "", skipped="mounting a tmpfs needs root")
    mount = work / "disk"
    mount.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.disk_mb}m", "tmpfs", str(mount)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        return Result(name, False, 0, 0, None, "", skipped=f"cannot mount a tmpfs here ({exc})")
    seen: dict[str, Any] = {}
    try:
        inst, load = _inbound_instance(mount, "cabinet", "", args.replies)
        inst.log = work / "serve.log"  # off the full disk, so the log says what happened
        filler = mount / "filler"

        def fault() -> float:
            with filler.open("wb") as handle:  # fill what is left, a MB at a time, up to ENOSPC
                try:
                    while True:
                        handle.write(b"\0" * (1 << 20))
                        handle.flush()
                except OSError:
                    pass
            print(f"  disk full after {len(load.accepted)} accepted", flush=True)
            # A full disk shows: SMTP 451s (the clients keep retrying), not ready, the CLI's one line.
            wait_until(lambda: not ready(inst), WAIT, "/readyz not ready on a full disk", inst.log)
            seen["readyz"] = httpx.get(f"{inst.base_url}/readyz", timeout=10).text.strip()
            wait_until(lambda: load.codes["451"] > 0, WAIT, "an SMTP 451 on a full disk", inst.log)
            cli = subprocess.run(
                [str(Path(sys.executable).parent / "cabinet"), "--config", str(inst.config), "company", "add",
                 "Disk Full Ltd", "--admin-email", "admin@disk-full.faults.example"],
                capture_output=True, text=True,
            )
            seen["cli"] = (cli.returncode, cli.stdout.strip() + cli.stderr.strip())
            time.sleep(args.disk_full)
            filler.unlink()
            freed = time.monotonic()
            print("  space freed", flush=True)
            wait_until(lambda: ready(inst), WAIT, "ready after space is freed", inst.log)
            seen["accepted_at_free"] = len(load.accepted)
            return time.monotonic() - freed

        try:
            recovered = _run_load(inst, load, fault)
            figures = inbound_figures(inst, load)
        finally:
            inst.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    result = _inbound_result(name, figures, recovered, "time from space freed to ready")
    code, line = seen.get("cli", (None, ""))
    result.detail += (f"; while full: /readyz said {seen.get('readyz', '')!r}, `cabinet company add` exited {code} "
                      f"with {len(line.splitlines())} line(s): {line!r}")
    result.once = result.once and code == 75 and len(line.splitlines()) == 1
    return result


SCENARIOS: dict[str, Callable[[Path, argparse.Namespace], Result]] = {
    "relay": relay_scenario,
    "kill": kill_scenario,
    "postgres": postgres_scenario,
    "disk": disk_scenario,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/faults.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--relay-outage", type=float, default=60.0, help="seconds the relay is down")
    parser.add_argument("--relay-tempfail", type=float, default=20.0, help="seconds the relay then answers 451")
    parser.add_argument("--invitations", type=int, default=20, help="invitations queued before the relay outage")
    parser.add_argument("--replies", type=int, default=300, help="inbound replies per inbound scenario")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of serve")
    parser.add_argument("--pg-restarts", type=int, default=2, help="PostgreSQL restarts")
    parser.add_argument("--postgres-bin", help="PostgreSQL's bin folder (default: the newest under /usr/lib/postgresql)")
    parser.add_argument("--disk-mb", type=int, default=48, help="size of the tmpfs the data folder is on")
    parser.add_argument("--disk-full", type=float, default=10.0, help="seconds the disk stays full")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    work = Path(tempfile.mkdtemp(prefix="cabinet-faults."))
    results: list[Result] = []
    try:
        for name in chosen:
            print(f"== {name}", flush=True)
            started = time.monotonic()
            try:
                result = SCENARIOS[name](work / name, args)
            except Exception as exc:  # one scenario's failure is a figure too; the others still run
                result = Result(name, False, 0, 0, None, f"the scenario failed: {type(exc).__name__}: {exc}")
            print(f"  {result.line()} ({time.monotonic() - started:.0f} s)", flush=True)
            results.append(result)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"Fault run {email.utils.formatdate(usegmt=True)} ({sys.platform}, {os.cpu_count()} cores)")
    for result in results:
        print(f"- {result.line()}")
    print(json.dumps([result.__dict__ for result in results]), file=sys.stderr)
    if any(not r.skipped and (not r.once or r.lost or r.doubled) for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
