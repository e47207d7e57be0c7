"""Did they get it? Each email's delivery state — queued, sent, bounced (with reason), link opened, acted
on — on a client's page, on Pending and in `cabinet invitation list --json`; and opening a link only
appends a telemetry event, changing nothing the link does."""

from __future__ import annotations

import json
from email.utils import parseaddr
from typing import Any

from tests.conftest import Browser, Cli, Mailbox, Seed, any_link_in, csrf_of, link_in, wait_until
from tests.inbound_helpers import deliver, dsn, wait_processed
from tests.test_workspace import client_id, signed_in


def deliveries(cli: Cli) -> dict[str, Any]:
    return {i["email"]: i["delivery"] for i in json.loads(cli("invitation", "list", "--json").output)}


def wait_delivery(cli: Cli, email: str, wanted: str) -> None:
    """The worker records "sent" just after the Maildir file appears: wait for that, not for time."""
    wait_until(lambda: deliveries(cli).get(email) == wanted, what=f"{email} {wanted}",
               detail=lambda: str(deliveries(cli)))


def test_an_invitation_goes_sent_opened_acted_and_a_bad_address_bounced(
    server, cli: Cli, seed: Seed, env, mailbox: Mailbox
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    cli("invitation", "send", "--company", seed.company, "--email", "nobody@remote.example")
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[-1])
    wait_delivery(cli, seed.accountant, "sent")

    # Bounced, with the remote server's reason.
    bounced = mailbox.wait("nobody@remote.example")[-1]
    bounce_to = parseaddr(str(bounced["Return-Path"]))[1]
    deliver(env, "", [bounce_to], dsn(bounce_to, "nobody@remote.example", str(bounced["Message-ID"])))
    wait_processed(env, 1)
    assert deliveries(cli)["nobody@remote.example"] == "bounced"

    # Opening the link: the page is shown; an append-only event is the only write.
    stranger = Browser(env.base_url)
    before = env.sql("SELECT id, state, nonce, decided_at, expires_at FROM invitations ORDER BY id")
    assert stranger.get(link).status_code == 200
    assert stranger.get(link).status_code == 200  # a reload adds nothing
    assert stranger.get(link + "x").status_code == 404  # a forged link records nothing
    assert env.sql("SELECT id, state, nonce, decided_at, expires_at FROM invitations ORDER BY id") == before
    opened = env.sql("SELECT actor, channel, detail FROM events WHERE kind = 'link.opened'")
    assert len(opened) == 1 and opened[0][0] == seed.accountant and json.loads(opened[0][2])["purpose"] == "invitation"
    assert deliveries(cli)[seed.accountant] == "opened"
    explained = json.loads(cli("link", "explain", link, "--json").output)
    assert [e["kind"] for e in explained["events"]][-1] == "link.opened" and explained["used"] is None

    # The invited accountant sees it on Pending, with its state.
    marie = signed_in(env, seed.accountant)
    pending = marie.get("/pending").text
    assert 'data-delivery="opened"' in pending and "link opened" in pending

    # Acted on once accepted.
    assert marie.submit(link, link + "/accept").status_code == 303
    assert deliveries(cli)[seed.accountant] == "acted"
    assert deliveries(cli)["nobody@remote.example"] == "bounced"
    marie.close()
    stranger.close()


def test_a_client_page_shows_the_setup_email_opened_then_acted_on(server, cli: Cli, seed: Seed, env, mailbox) -> None:
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Garage Lévesque", "--email",
        "marc@garage.example", "--billing", "wholesale", "--product", "qbo-plus")
    setup = any_link_in(mailbox.wait("marc@garage.example", subject="primary admin")[-1])
    marie = signed_in(env, seed.accountant)
    url = f"/clients/{client_id(env, 'Garage Lévesque')}"

    def setup_state() -> str:
        html = marie.get(url).text
        line = next(li for li in html.split('<li class="email">')[1:] if "marc@garage.example" in li)
        return line.split('data-delivery="')[1].split('"')[0]

    wait_until(lambda: setup_state() != "queued", what="the setup email to leave the outbox")
    assert setup_state() == "sent"
    visitor = Browser(env.base_url)
    page = visitor.get(setup)
    assert page.status_code == 200
    assert setup_state() == "opened"
    assert "Link opened" not in marie.get(url).text  # telemetry for the email's state, not a line of its own
    assert visitor.http.post(setup, data={"csrf_token": csrf_of(page.text), "name": "Marc Lévesque"}).status_code == 303
    assert setup_state() == "acted"
    assert "acted on" in marie.get(url).text
    marie.close()
    visitor.close()


def test_an_expired_invitation_link_shows_its_page_and_records_no_opening(
    server, cli: Cli, seed: Seed, env, mailbox: Mailbox, clock
) -> None:
    """The page's own read decides whether an opening is recorded: a link past its age still says what
    became of the invitation (200) but was not opened in time, so nothing is written."""
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[-1])
    clock.advance(days=31)
    stranger = Browser(env.base_url)
    page = stranger.get(link)
    assert page.status_code == 200 and "expired" in page.text
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'link.opened'") == [(0,)]
    stranger.close()
