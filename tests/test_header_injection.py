"""Header injection through every way in: names are refused at input, and what
comes from outside (a reply's subject) is written inert. Each case checks the
real written Maildir file: exactly the headers Cabinet meant, nothing else."""

from __future__ import annotations

import base64
from email import message_from_bytes, policy

from mailer.maildir import list_mail, read_raw
from tests.conftest import Browser, Cli, Env, Mailbox, Seed
from tests.inbound_helpers import deliver, wait_processed
from tests.test_inbound import invite

INJECTED = "x\r\nReply-To: billing@evil.example\r\n\r\nattacker body"
ONCE = "=?utf-8?b?" + base64.b64encode(INJECTED.encode()).decode() + "?="
TWICE = "=?utf-8?b?" + base64.b64encode(ONCE.encode()).decode() + "?="
BAD_NAMES = ["Oak\x1b[31mGarage", "Garage \u202eelgoog", "Oak\x00Garage", "Oak\r\nBcc: x@evil.example", "Oak\tGarage"]


def test_the_cli_refuses_names_that_could_reach_a_header(cli: Cli, env: Env) -> None:
    for name in BAD_NAMES:
        result = cli("company", "add", name, "--admin-email", "admin@oak.example", expect=1)
        assert "cannot contain U+" in result.output and "[name.unsafe_character]" in result.output, result.output
        assert "\x1b" not in result.output and "\u202e" not in result.output  # named, never echoed raw
    assert env.sql("SELECT count(*) FROM companies") == [(0,)]


def test_the_add_client_page_refuses_them_too(server, seed: Seed, env: Env) -> None:
    browser = Browser(env.base_url)
    try:
        browser.sign_in("/clients/new", seed.accountant)
        for name in BAD_NAMES[:3]:
            response = browser.submit("/clients/new", "/clients/new", kind="business", name=name, billing="none",
                                      email="", phone="", firm_id="", locale="en")
            assert response.status_code == 400 and "cannot contain" in response.text, response.text[-2000:]
    finally:
        browser.close()
    assert env.sql("SELECT count(*) FROM clients WHERE name LIKE 'Oak%' OR name LIKE 'Garage%'") == [(0,)]


def test_a_reply_whose_subject_decodes_to_new_headers_is_forwarded_inert(
    server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env
) -> None:
    _, reply_to = invite(cli, mailbox, seed)
    raw = (
        f"From: {seed.accountant}\r\nTo: {reply_to}\r\nSubject: Re: {TWICE}\r\n"
        f"Authentication-Results: mx.tremblay.example; dkim=pass header.d=tremblay.example\r\n"
        "Date: Mon, 30 Nov 2026 12:00:00 +0000\r\nMessage-ID: <inject-1@tremblay.example>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nPlease call me about the books.\r\n"
    ).encode()
    deliver(env, seed.accountant, [reply_to], raw)
    wait_processed(env, 1)
    mailbox.wait(seed.admin, subject="Reply from")
    maildir = env.maildir
    written = [read_raw(maildir, m.id) for m in list_mail(maildir, seed.admin)]
    assert written
    for data in written:
        message = message_from_bytes(data, policy=policy.default)
        names = {name.lower() for name in message.keys()}
        assert names <= {"return-path", "from", "to", "subject", "date", "message-id", "reply-to", "auto-submitted",
                         "mime-version", "content-type", "in-reply-to", "references"}, names
        assert [str(v) for v in message.get_all("Reply-To", [])] == [v for v in message.get_all("Reply-To", [])
                                                                     if str(v).startswith("reply+")]
        assert b"\r\nReply-To: billing@evil.example" not in data and b"\nattacker body" not in data.split(b"\n\n")[0]
        assert "\n" not in str(message["Subject"]) and "\r" not in str(message["Subject"])
