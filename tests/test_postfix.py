"""deploy/ works as written: a real, private Postfix built from deploy/'s files in front of `cabinet serve`.

The Postfix instance is Debian's `postfix` package run with a config, queue and data folder of its
own in a temporary folder (`postfix -c DIR start`), listening on a free loopback port; the system's
own Postfix, if any, is not touched. Its outbound relay is an aiosmtpd sink on loopback standing in
for the Internet. "Outside" clients connect from 127.0.0.3, which is not in this test's mynetworks
(127.0.0.1, where Cabinet is). Skipped unless Postfix is installed (scripts/test.sh installs it)
and the test runs as root (Postfix's master process starts as root).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import START_TIMEOUT, Cli, Env, ServeProcess, free_ports, queued_email, wait_until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
MASTER_CF = next((p for p in (Path("/usr/share/postfix/master.cf.dist"), Path("/etc/postfix/master.cf")) if p.exists()), None)
OUTSIDE = "127.0.0.3"  # a loopback address outside this Postfix's mynetworks
DOMAIN = "cabinet.example"  # the test config's [smtp] domain, in place of deploy/'s cabinet.firm.example

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not (Path(POSTFIX).exists() and MASTER_CF is not None),
                       reason="Postfix is not installed (scripts/test.sh installs Debian's postfix)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance must be started as root"),
]


@dataclass
class Sink:
    """The Internet, as far as Postfix can tell: accepts everything but ``gone@…``."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address.startswith("gone@"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 OK"

    def to(self, recipient: str) -> list[tuple[str, EmailMessage]]:
        with self.lock:
            return [(mail_from, message_from_bytes(raw)) for mail_from, rcpts, raw in self.received if recipient in rcpts]  # type: ignore[misc]


@dataclass
class PrivatePostfix:
    root: Path
    port: int
    cabinet_port: int  # where the Cabinet of the test at hand listens for LMTP

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def run(self, *command: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT)
        assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}\n{self.log_tail()}"
        return result.stdout

    def log_tail(self, lines: int = 40) -> str:
        log = self.root / "maillog"
        text = log.read_text(errors="replace") if log.exists() else "(no maillog yet)"
        return f"last {lines} lines of {log}:\n" + "\n".join(text.splitlines()[-lines:])


def deploy_file(name: str, *, cabinet_port: int, etc: Path) -> str:
    """A deploy/ file as an operator would install it: our domain, our paths, Cabinet's LMTP port."""
    text = (DEPLOY / name).read_text(encoding="utf-8")
    return (text.replace("cabinet.firm.example", DOMAIN).replace("/etc/postfix/", f"{etc}/")
            .replace("127.0.0.1:8025", f"127.0.0.1:{cabinet_port}"))


@pytest.fixture(scope="module")
def module_sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    (port,) = free_ports(1)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def sink(module_sink: tuple[Sink, int]) -> tuple[Sink, int]:
    handler, _ = module_sink
    with handler.lock:
        handler.received.clear()
    return module_sink


@pytest.fixture(scope="module")
def postfix(module_sink: tuple[Sink, int]) -> Iterator[PrivatePostfix]:
    """One Postfix for the module (starting one takes a while); each test's Cabinet listens on its LMTP port."""
    _, sink_port = module_sink
    # Not under pytest's tmp_path (mode 0700 folders): Postfix's own user must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="cabinet-postfix-", dir="/tmp"))
    root.chmod(0o755)
    port, cabinet_port = free_ports(2)
    instance = PrivatePostfix(root, port, cabinet_port)
    etc = instance.etc
    for folder in ("etc", "queue", "data"):
        (root / folder).mkdir()
    shutil.chown(root / "data", "postfix", "postfix")
    assert MASTER_CF is not None
    shutil.copy(MASTER_CF, etc / "master.cf")
    # What makes it private and testable, then deploy/'s settings exactly as an operator adds them.
    cabinet = {"cabinet_port": cabinet_port, "etc": etc}
    (etc / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtpd_peername_lookup = no
relayhost = [127.0.0.1]:{sink_port}
address_verify_poll_delay = 1s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s

""" + deploy_file("postfix-main.cf.example", **cabinet),
        encoding="utf-8",
    )
    (etc / "transport").write_text(deploy_file("postfix-transport.example", **cabinet))
    (etc / "recipient_access").write_text(deploy_file("postfix-recipient-access.example", **cabinet))
    (etc / "header_checks").write_text(deploy_file("postfix-header_checks", **cabinet))
    conf = ("-c", str(etc))
    # Only Cabinet (127.0.0.1) is "ours" here, so that 127.0.0.3 can play an outside sender.
    instance.run(POSTCONF, *conf, "-e", "mynetworks = 127.0.0.1/32")
    instance.run(POSTCONF, *conf, "-F", "*/*/chroot = n")
    instance.run(POSTCONF, *conf, "-MX", "smtp/inet")
    instance.run(POSTCONF, *conf, "-M", f"127.0.0.1:{port}/inet = 127.0.0.1:{port} inet n - n - - smtpd")
    instance.run(POSTMAP, *conf, f"hash:{etc}/transport")
    instance.run(POSTMAP, *conf, f"hash:{etc}/recipient_access")
    warnings = instance.run(POSTCONF, *conf, "-n")  # reads it all: a typo in deploy/ fails here, not later
    assert "warning" not in warnings.lower(), warnings
    instance.run(POSTFIX, *conf, "start")
    try:
        wait_until(lambda: _answers(port), START_TIMEOUT, f"the private Postfix on port {port}", instance.log_tail)
        yield instance
    finally:
        subprocess.run([POSTFIX, *conf, "stop"], capture_output=True, timeout=START_TIMEOUT)
        shutil.rmtree(root, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            return smtp.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


@pytest.fixture
def cabinet(env: Env, cli: Cli, postfix: PrivatePostfix) -> Iterator[ServeProcess]:
    """`cabinet serve` behind the Postfix, set up as README's service section says."""
    text = env.config_path.read_text()
    text = text.replace("[mail]\n", f'[mail]\ntransport = "smtp"\nrelay_host = "127.0.0.1"\nrelay_port = {postfix.port}\nrelay_tls = "none"\n', 1)
    text += '\n[inbound]\nprotocol = "lmtp"\ntrusted_authserv_ids = ["mx.firm.example"]\n'
    env.config_path.write_text(text)
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example")
    process = ServeProcess(env, environ={"CABINET_SMTP_LISTEN": f"127.0.0.1:{postfix.cabinet_port}"}).start()
    yield process
    # Nothing left in Postfix's queue for the next test's Cabinet.
    wait_until(lambda: postfix.run(POSTQUEUE, "-c", str(postfix.etc), "-j").strip() == "",
               what="Postfix's queue to be empty", detail=postfix.log_tail)
    process.stop()


def send(port: int, source: str, recipient: str, message: EmailMessage | None = None) -> None:
    """One SMTP transaction from ``source``; raises what Postfix refused. Retries while Postfix answers 4xx
    (the first RCPT for a new address waits for its verification probe to Cabinet)."""
    message = message or simple_message(recipient)
    last: list[smtplib.SMTPException] = []

    def attempt() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(source, 0)) as smtp:
                smtp.send_message(message, "marie@tremblay.example", [recipient])
            return True
        except smtplib.SMTPRecipientsRefused as exc:
            code = exc.recipients[recipient][0]
            if code >= 500:
                raise
            last[:] = [exc]
            return False

    wait_until(attempt, what=f"Postfix to take or refuse mail to {recipient}", detail=lambda: repr(last), interval=0.5)


def simple_message(recipient: str, body: str = "accept") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Marie Tremblay <marie@tremblay.example>"
    message["To"] = recipient
    message["Subject"] = "Re: Invitation"
    message["Message-ID"] = make_msgid(domain="tremblay.example")
    message.set_content(body)
    return message


def reply_to_of_invitation(env: Env, cli: Cli, email: str) -> str:
    cli("invitation", "send", "--company", "Boulangerie Roy", "--email", email)
    return parseaddr(str(queued_email(env, cli, "kind = 'invitation' AND recipient = :r", r=email)["Reply-To"]))[1]


def test_outbound_mail_leaves_through_postfix_with_cabinets_from_and_bounces_come_back(
    env: Env, cli: Cli, cabinet: ServeProcess, postfix: PrivatePostfix, sink: tuple[Sink, int],
):
    handler, _ = sink
    reply_to_of_invitation(env, cli, "marie@tremblay.example")
    ((envelope_from, invitation),) = wait_until(lambda: handler.to("marie@tremblay.example"),
                                                what="the invitation to reach the sink through Postfix", detail=postfix.log_tail)
    assert parseaddr(str(invitation["From"]))[1] == f"cabinet@{DOMAIN}"  # DMARC aligns on Cabinet's domain
    assert envelope_from.startswith("bounce+") and envelope_from.endswith(f"@{DOMAIN}")
    wait_until(lambda: env.sql("SELECT state FROM outbox WHERE recipient = 'marie@tremblay.example'") == [("sent",)],
               what="the invitation to be marked sent")

    # The far side refuses a recipient: Postfix's bounce comes back to bounce+… over LMTP.
    reply_to_of_invitation(env, cli, "gone@tremblay.example")
    wait_until(lambda: env.sql("SELECT state FROM outbox WHERE recipient = 'gone@tremblay.example'") == [("bounced",)],
               what="Postfix's bounce to mark the invitation bounced",
               detail=lambda: f"{env.sql('SELECT id, kind, state, outcome FROM inbound')}\n{postfix.log_tail()}")


def test_a_reply_from_outside_reaches_cabinet_without_its_authentication_results(
    env: Env, cli: Cli, cabinet: ServeProcess, postfix: PrivatePostfix,
):
    reply_to = reply_to_of_invitation(env, cli, "marie@tremblay.example")
    message = simple_message(reply_to, "See you Monday.")
    # A forged verdict in the name of this very Postfix: Cabinet would believe it if it got through.
    message["Authentication-Results"] = "mx.firm.example; dkim=pass header.d=tremblay.example; dmarc=pass header.from=tremblay.example"
    message["X-Kept"] = "yes"
    send(postfix.port, OUTSIDE, reply_to, message)
    rows = wait_until(lambda: env.sql("SELECT raw FROM inbound WHERE message_id = :m", m=str(message["Message-ID"])),
                      what="the reply to reach Cabinet over LMTP", detail=postfix.log_tail)
    stored = bytes(rows[0][0])
    assert b"X-Kept: yes" in stored and b"See you Monday." in stored
    assert b"authentication-results" not in stored.lower(), stored.decode(errors="replace")


@pytest.mark.parametrize("source", [OUTSIDE, "127.0.0.1"], ids=["from outside", "from mynetworks"])
def test_postfix_refuses_at_rcpt_what_cabinet_would_refuse(env: Env, cabinet: ServeProcess, postfix: PrivatePostfix, source: str):
    """Never accepted and then bounced: the unknown address is refused while the sender is connected,
    whoever the sender is."""
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(postfix.port, source, f"reply+nosuchreference@{DOMAIN}")
    assert refused.value.recipients[f"reply+nosuchreference@{DOMAIN}"][0] == 550
    assert env.sql("SELECT count(*) FROM inbound") == [(0,)]


def test_postfix_relays_for_cabinet_only(postfix: PrivatePostfix, env: Env):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(postfix.port, OUTSIDE, "someone@elsewhere.example")
    assert refused.value.recipients["someone@elsewhere.example"][0] == 554  # Relay access denied
