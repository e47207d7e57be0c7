"""Several `cabinet serve` instances on one PostgreSQL: claimed work, single-use links, crashes.

Each instance is a real process; the outbound relay is an aiosmtpd sink on
loopback (standing in for the firm's MTA) that records every Message-ID it
receives. Run on PostgreSQL only (with SQLite a second instance refuses to
start, which test_operations covers).
"""

from __future__ import annotations

import json
import random
import smtplib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import SMTP as SMTP_POLICY
from email.utils import parseaddr
from typing import Callable, Iterator

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import (PASSWORD, Browser, Cli, Env, ServeProcess, csrf_of, free_port, free_ports, queued_email,
                            wait_until)
from tests.inbound_helpers import reply

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def postgresql_only(env: Env) -> None:
    if env.is_sqlite:
        pytest.skip("several instances need PostgreSQL (scripts/test.sh runs the suite on it too)")


class Sink:
    """The relay: keeps every message it accepts, in order."""

    def __init__(self) -> None:
        self.message_ids: list[str] = []
        self.subjects: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = message_from_bytes(envelope.original_content or b"")
        with self.lock:
            self.message_ids.append(str(message["Message-ID"]))
            self.subjects.append((envelope.rcpt_tos[0], str(message["Subject"])))
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


class Instance(ServeProcess):
    """One `cabinet serve` of several on the same config, on listen ports of its own."""

    def __init__(self, env: Env, name: str, http_port: int, smtp_port: int) -> None:
        super().__init__(env, name=name, http_port=http_port, environ={
            "CABINET_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "CABINET_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
        })
        self.smtp_port = smtp_port


@pytest.fixture
def instances(env: Env, cli: Cli, sink) -> Iterator[list[Instance]]:
    _, sink_port = sink
    text = env.config_path.read_text()
    text = text.replace("[mail]\n", f'[mail]\ntransport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {sink_port}\nrelay_tls = "none"\n'
        # A lease short enough that mail a killed instance had claimed is sent by the other within the
        # test, and long enough that a live instance always finishes sending a claimed batch (up to
        # 50 emails) first, even on a loaded machine: a 3 s lease ran out mid-batch there, and the
        # other instance sent those emails again with no crash at all.
        "claim_lease = 60.0\n", 1)
    env.config_path.write_text(text)
    pair = [Instance(env, "serve-a", env.http_port, env.smtp_port), Instance(env, "serve-b", *free_ports(2))]
    try:
        for instance in pair:
            instance.start()
        yield pair
    finally:
        for instance in pair:
            instance.stop()


def seed(cli: Cli) -> None:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("staff", "add", "marie@tremblay.example", "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n")
    cli("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example")


def invitation_link_and_reply_to(env: Env, cli: Cli, email: str) -> tuple[str, str]:
    """Send an invitation and read its link and Reply-To from the outbox row (the sink may be slow)."""
    out = cli("invitation", "send", "--company", "Boulangerie Roy", "--email", email).output
    link = out.split("Link: ")[1].strip()
    return link, parseaddr(str(queued_email(env, cli, "kind = 'invitation'")["Reply-To"]))[1]


def test_fifty_concurrent_accepts_over_two_instances_accept_once(env: Env, cli: Cli, instances, sink,
                                                                figures: Callable[[str], None]):
    seed(cli)
    link, _ = invitation_link_and_reply_to(env, cli, "marie@tremblay.example")
    path = "/" + link.split("/", 3)[3]
    browser = Browser(instances[0].base_url)
    browser.sign_in(link, "marie@tremblay.example")
    token = csrf_of(browser.get(path).text)
    cookies = dict(browser.http.cookies)

    def press(n: int) -> int:
        target = instances[n % 2].base_url
        with httpx.Client(base_url=target, cookies=cookies, timeout=60) as client:
            return client.post(path + "/accept", data={"csrf_token": token}).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = Counter(pool.map(press, range(50)))
    figures(f"50 concurrent accepts over two instances: {dict(codes)}")
    assert codes[303] == 1 and codes[409] == 49
    assert env.sql("SELECT count(*) FROM clients") == [(1,)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'") == [(1,)]
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')") == [(2,)]


@dataclass
class Load:
    """A mixed load against both instances; what each side saw acknowledged."""

    instances: list[Instance]
    reply_to: str
    link: str
    acknowledged_mail: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: Counter[str] = field(default_factory=Counter)

    def mail(self) -> None:
        n = 0
        # Bounded: at most 300 replies per sender, paced, so the suite's time stays predictable.
        while not self.stop.is_set() and n < 300:
            target = random.choice(self.instances)
            message = reply(self.reply_to, "marie@tremblay.example", f"Note {n}", authenticated=False)
            n += 1
            try:
                with smtplib.SMTP("127.0.0.1", target.smtp_port, timeout=10) as smtp:
                    smtp.sendmail("marie@tremblay.example", [self.reply_to], message.as_bytes(policy=SMTP_POLICY))
                self.acknowledged_mail.append(str(message["Message-ID"]))
                time.sleep(0.02)
            except (OSError, smtplib.SMTPException):
                self.errors["smtp"] += 1
                time.sleep(0.05)

    def clicks(self) -> None:
        for _ in range(2000):
            if self.stop.is_set():
                return
            try:
                httpx.get(random.choice(self.instances).base_url + "/" + self.link.split("/", 3)[3], timeout=10)
            except httpx.HTTPError:
                self.errors["http"] += 1
                time.sleep(0.05)


def make_reminders_due(env: Env, cli: Cli, companies: int) -> None:
    """Billing-transfer permissions whose 12-hour reminder is due now (their window is nearly over)."""
    for n in range(companies):
        cli("company", "add", f"Client {n}", "--admin-email", f"owner{n}@clients.example")
        env_sql_execute(env, f"""
            INSERT INTO clients (firm_id, company_id, kind, name, name_key, search_key, billing, status, connected_at,
                                 created_at)
            SELECT f.id, c.id, 'business', c.name, c.name_key, c.name_key, 'self-paid', 'active', now(), now()
            FROM firms f, companies c WHERE c.name = 'Client {n}'""")
        cli("transfer", "allow", "--company", f"Client {n}", "--firm", "Tremblay CPA")
    env_sql_execute(env, "UPDATE billing_transfers SET expires_at = now() + interval '11 hours'")


def env_sql_execute(env: Env, statement: str) -> None:
    from tests.inbound_helpers import execute

    execute(env, statement)


def settle(env: Env) -> None:
    # Inbound first (processing queues forwards), then the outbox those forwards went to.
    wait_until(lambda: env.sql("SELECT count(*) FROM inbound WHERE state = 'received'") == [(0,)],
               timeout=180, what="inbound to be processed", interval=0.2)
    wait_until(lambda: env.sql("SELECT count(*) FROM outbox WHERE state = 'pending'") == [(0,)],
               timeout=180, what="the outbox to drain", interval=0.2)


def check(env: Env, sink: Sink, acknowledged: list[str], transfers: int, crashes: int) -> dict[str, int]:
    stored = Counter(m for (m,) in env.sql("SELECT message_id FROM inbound"))
    lost = [m for m in acknowledged if m not in stored]
    states = Counter(s for (s,) in env.sql("SELECT state FROM inbound"))
    forwards = env.sql("SELECT count(*) FROM outbox WHERE kind = 'reply_forwarded'")[0][0]
    recorded = env.sql("SELECT count(*) FROM events WHERE kind = 'reply.received'")[0][0]
    outbox_ids = [m for (m,) in env.sql("SELECT message_id FROM outbox")]
    delivered = Counter(sink.message_ids)
    never_sent = [m for m in outbox_ids if m not in delivered]
    resent = sum(c - 1 for c in delivered.values() if c > 1)
    reminders = [s for _, s in sink.subjects if s.startswith("Reminder")]
    figures = {
        "inbound acknowledged": len(acknowledged), "inbound stored": sum(stored.values()),
        "inbound processed": states["processed"], "inbound duplicates": states["duplicate"],
        "inbound lost": len(lost), "replies recorded": recorded, "forwards queued": forwards,
        "emails queued": len(outbox_ids), "emails delivered": sum(delivered.values()),
        "resends after a crash (same Message-ID)": resent, "emails never sent": len(never_sent),
        "reminders": len(reminders), "crashes": crashes,
    }
    assert not lost, lost[:5]
    assert states["quarantined"] == 0 and states["received"] == 0
    assert recorded == forwards == states["processed"]  # each stored reply had exactly one effect
    assert not never_sent
    assert len(set(reminders)) == len(reminders) == transfers  # one reminder per permission, once
    if crashes == 0:
        assert resent == 0, "no crash, so no Message-ID may reach the relay twice"
    return figures


def start_load(env: Env, cli: Cli, instances: list[Instance]) -> tuple[Load, list[threading.Thread]]:
    """Two mail senders and a link clicker on both instances, and five reminders falling due."""
    seed(cli)
    link, reply_to = invitation_link_and_reply_to(env, cli, "marie@tremblay.example")
    load = Load(instances, reply_to, link)
    threads = [threading.Thread(target=load.mail), threading.Thread(target=load.mail), threading.Thread(target=load.clicks)]
    for thread in threads:
        thread.start()
    make_reminders_due(env, cli, companies=5)
    return load, threads


def stop_load(load: Load, threads: list[threading.Thread]) -> None:
    load.stop.set()
    for thread in threads:
        thread.join(30)


def test_two_instances_under_mixed_load_do_everything_once(env: Env, cli: Cli, instances, sink,
                                                           figures: Callable[[str], None]):
    handler, _ = sink
    load, threads = start_load(env, cli, instances)
    try:
        # Load for as long as it takes both senders to get a good number of replies through.
        wait_until(lambda: len(load.acknowledged_mail) >= 100 or not any(t.is_alive() for t in threads[:2]),
                   timeout=180, what="100 replies acknowledged", detail=lambda: instances[0].tail() + "\n" + instances[1].tail())
    finally:
        stop_load(load, threads)
    settle(env)
    measured = check(env, handler, load.acknowledged_mail, transfers=5, crashes=0)
    figures(f"two instances, mixed load: {json.dumps(measured)}")


def test_sigkill_twenty_times_under_load_loses_nothing_and_doubles_nothing(env: Env, cli: Cli, instances, sink,
                                                                          figures: Callable[[str], None]):
    handler, _ = sink
    load, threads = start_load(env, cli, instances)
    link = load.link
    rng = random.Random(20261127)
    crashes = 0
    accepted: int | None = None
    try:
        for n in range(20):
            time.sleep(rng.uniform(0.05, 0.4))
            victim = rng.choice(instances)
            if n == 10:
                # An accept POST while instances keep dying: if it was answered, it must stick.
                survivor = instances[1 - instances.index(victim)]
                browser = Browser(survivor.base_url)
                browser.sign_in(link, "marie@tremblay.example")
                accepted = browser.post("/" + link.split("/", 3)[3] + "/accept").status_code
            victim.kill()
            crashes += 1
            victim.start()
    finally:
        stop_load(load, threads)
    settle(env)
    measured = check(env, handler, load.acknowledged_mail, transfers=5, crashes=crashes)
    assert accepted == 303
    assert env.sql("SELECT state FROM invitations") == [("accepted",)]
    assert env.sql("SELECT count(*) FROM clients WHERE name = 'Boulangerie Roy'") == [(1,)]
    figures(f"{crashes} SIGKILLs under load: {json.dumps(measured)}")
