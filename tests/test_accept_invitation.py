"""Flow 1 over the real HTTP server: a client invites its accountant, who accepts by link."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import PASSWORD, Browser, Cli, Env, FakeClock, Mailbox, Seed, csrf_of, link_in
from tests.signatures import forged


def invite(cli: Cli, mailbox: Mailbox, seed: Seed, email: str | None = None) -> str:
    cli("invitation", "send", "--company", seed.company, "--email", email or seed.accountant)
    messages = mailbox.wait((email or seed.accountant).lower(), subject="Invitation", count=1)
    return link_in(messages[-1])


def roster(cli: Cli, firm: str) -> list[dict[str, object]]:
    return json.loads(cli("client", "list", "--firm", firm, "--json").output)


def invitations(cli: Cli) -> list[dict[str, object]]:
    return json.loads(cli("invitation", "list", "--json").output)


def state_snapshot(env: Env) -> tuple[object, ...]:
    """Everything a click could change: invitations, roster, outbox, events."""
    return (
        env.sql("SELECT id, state, decided_at, firm_id, renewal_requested_at FROM invitations ORDER BY id"),
        env.sql("SELECT * FROM clients ORDER BY id"),
        env.sql("SELECT count(*) FROM outbox"),
        # The first opening's link.opened row is telemetry (daemon.link_opens), not a change of state.
        env.sql("SELECT count(*) FROM events WHERE kind <> 'link.opened'"),
    )


def test_invitation_email_has_accept_link_and_validity(server, cli, seed, mailbox):
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    (message,) = mailbox.wait(seed.accountant, subject="Invitation")
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Accept invitation" in text and "Accept invitation" in html
    assert link_in(message) in html
    assert link_in(message).startswith(server.env.base_url + "/invitations/")
    expires = invitations(cli)[0]["expires_at"]
    assert str(expires)[:4] in text  # the validity date is spelled out
    assert "valid until" in text
    assert message["Message-ID"]
    # A person's invitation, not an automatic notice: replies are welcome.
    assert message["Auto-Submitted"] is None


def test_opening_the_link_changes_nothing(server, browser, cli, seed, mailbox, env):
    link = invite(cli, mailbox, seed)
    before = state_snapshot(env)
    for _ in range(3):
        assert browser.get(link).status_code == 200
        assert browser.head(link).status_code == 200
    browser.sign_in(link, seed.accountant)
    for _ in range(3):
        page = browser.get(link)
        assert page.status_code == 200
        assert "Accept invitation" in page.text
        assert browser.head(link).status_code == 200
    assert state_snapshot(env) == before
    assert roster(cli, seed.firm) == []
    assert invitations(cli)[0]["status"] == "pending"


def test_link_pages_do_not_leak_the_token(server, browser, cli, seed, mailbox):
    link = invite(cli, mailbox, seed)
    page = browser.get(link)
    assert page.headers["Referrer-Policy"] == "same-origin"  # no Referer to any other site
    assert page.headers["Cache-Control"] == "no-store"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie


def test_accept_connects_the_company_once(server, browser, cli, seed, mailbox, env):
    link = invite(cli, mailbox, seed)
    signed_in = browser.sign_in(link, seed.accountant)
    assert signed_in.status_code == 303
    page = browser.get(link)
    assert "Accept invitation" in page.text
    assert "Tremblay CPA" in page.text
    token = csrf_of(page.text)
    firm_id = env.sql("SELECT id FROM firms WHERE name = 'Tremblay CPA'")[0][0]

    first = browser.http.post(link + "/accept", data={"csrf_token": token, "firm_id": str(firm_id)})
    assert first.status_code == 303
    # Pressing the button again (double click, back button, replay) has no second effect.
    again = browser.http.post(link + "/accept", data={"csrf_token": token, "firm_id": str(firm_id)})
    assert again.status_code == 409
    assert "accepted by Marie Tremblay" in again.text

    clients = roster(cli, seed.firm)
    assert len(clients) == 1
    client = clients[0]
    assert client["name"] == seed.company and client["company"] == seed.company
    assert client["kind"] == "business" and client["status"] == "active" and client["billing"] == "self-paid"
    assert client["connected_at"]
    assert roster(cli, seed.other_firm) == []

    (accepted,) = mailbox.wait(seed.admin, subject="accepted")
    body = accepted.get_body(("plain",)).get_content()
    assert "Marie Tremblay" in body and seed.accountant in body and seed.firm in body
    assert accepted["Auto-Submitted"] == "auto-generated"
    (added,) = mailbox.wait(seed.accountant, subject=seed.company, count=2)[1:]
    assert seed.company in added.get_body(("plain",)).get_content()

    shown = browser.get(link)
    assert "accepted by Marie Tremblay" in shown.text and seed.firm in shown.text
    # Exactly one acceptance event and one set of notices, whatever was pressed.
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'")[0][0] == 1
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')")[0][0] == 2


def test_accountant_in_several_firms_chooses_one_of_their_own(server, browser, cli, seed, mailbox, env):
    cli("firm", "add", "Côté Fiscalité", "--email", "info@cote.example")
    cli(
        "staff", "add", "luc@multi.example", "--name", "Luc Côté", "--firm", seed.firm, "--firm", "Côté Fiscalité",
        "--password-stdin", input=PASSWORD + "\n",
    )
    link = invite(cli, mailbox, seed, "Luc@Multi.example")
    browser.sign_in(link, "luc@multi.example")
    page = browser.get(link)
    firm_ids = {name: fid for fid, name in env.sql("SELECT id, name FROM firms")}
    # Only the firms Luc belongs to are offered, as labelled radio buttons.
    assert f'value="{firm_ids["Côté Fiscalité"]}"' in page.text
    assert f'value="{firm_ids[seed.firm]}"' in page.text
    assert f'value="{firm_ids[seed.other_firm]}"' not in page.text
    assert '<label for="firm-' in page.text
    token = csrf_of(page.text)

    # The server checks the choice too: a firm Luc does not belong to is refused.
    foreign = browser.http.post(link + "/accept", data={"csrf_token": token, "firm_id": str(firm_ids[seed.other_firm])})
    assert foreign.status_code == 403
    missing = browser.http.post(link + "/accept", data={"csrf_token": token})
    assert missing.status_code == 400 and "choose the firm" in missing.text
    assert invitations(cli)[0]["status"] == "pending"
    assert roster(cli, seed.other_firm) == []

    chosen = browser.http.post(link + "/accept", data={"csrf_token": token, "firm_id": str(firm_ids["Côté Fiscalité"])})
    assert chosen.status_code == 303
    assert [c["name"] for c in roster(cli, "Côté Fiscalité")] == [seed.company]
    assert roster(cli, seed.firm) == []


def test_expired_link_asks_the_client_admin_for_a_new_one(server, browser, cli, seed, mailbox, clock: FakeClock):
    link = invite(cli, mailbox, seed)
    clock.advance(days=31)
    page = browser.get(link)
    assert page.status_code == 200
    assert "expired" in page.text and "Ask for a new invitation" in page.text

    token = csrf_of(page.text)
    asked = browser.http.post(link + "/request-new", data={"csrf_token": token})
    assert asked.status_code == 200 and seed.admin in asked.text
    again = browser.http.post(link + "/request-new", data={"csrf_token": token})
    assert "already requested" in again.text
    (request,) = mailbox.wait(seed.admin, subject="new invitation")
    renewal = link_in(request)
    assert "/invitations/renew/" in renewal
    # Accepting an expired invitation is refused even with a valid session.
    browser.sign_in(link, seed.accountant)
    refused = browser.post(link + "/accept")
    assert refused.status_code == 409
    assert roster(cli, seed.firm) == []

    # The client admin opens the renewal link (changes nothing), then presses the button.
    admin = Browser(server.env.base_url)
    shown = admin.get(renewal)
    assert "Send a new invitation" in shown.text
    assert len(invitations(cli)) == 1
    sent = admin.submit(renewal, renewal)
    assert sent.status_code == 200 and "was sent to" in sent.text
    assert [i["status"] for i in invitations(cli)] == ["superseded", "pending"]
    fresh = mailbox.wait(seed.accountant, subject="Invitation", count=2)[-1]
    assert link_in(fresh) != link
    # Pressing the renewal button again answers with the invitation the first press sent,
    # and sends nothing more.
    again = admin.post(renewal)
    assert again.status_code == 200 and "was sent to" in again.text
    assert len(invitations(cli)) == 2
    assert len(mailbox.messages(seed.accountant)) == 2
    admin.close()


def test_second_invitation_supersedes_the_first(server, browser, cli, seed, mailbox):
    first = invite(cli, mailbox, seed)
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant.upper())
    second = link_in(mailbox.wait(seed.accountant, subject="Invitation", count=2)[-1])
    assert second != first
    statuses = [i["status"] for i in invitations(cli)]
    assert statuses == ["superseded", "pending"]
    page = browser.get(first)
    assert "newer invitation" in page.text and "Accept invitation" not in page.text
    browser.sign_in(second, seed.accountant)
    assert browser.post(first + "/accept").status_code == 409
    assert browser.submit(second, second + "/accept").status_code == 303
    assert len(roster(cli, seed.firm)) == 1


def test_revoked_invitation_cannot_be_accepted(server, browser, cli, seed, mailbox):
    link = invite(cli, mailbox, seed)
    invitation_id = invitations(cli)[0]["id"]
    cli("invitation", "revoke", str(invitation_id))
    page = browser.get(link)
    assert "withdrew this invitation" in page.text and "Accept invitation" not in page.text
    browser.sign_in(link, seed.accountant)
    assert browser.post(link + "/accept").status_code == 409
    assert roster(cli, seed.firm) == []
    # Revoking twice is a clear error, not a silent success.
    result = cli("invitation", "revoke", str(invitation_id), expect=1)
    assert "revoked" in result.output


def test_tampered_and_unknown_links_are_404_never_500(server, browser, cli, seed, mailbox):
    link = invite(cli, mailbox, seed)
    token = link.rsplit("/", 1)[1]
    bad_signature = forged(token)
    for bad in (bad_signature, "garbage", token.split(".")[0], "WzEsIngiXQ.x.y", token + "x"):
        response = browser.get(f"/invitations/{bad}")
        assert response.status_code == 404, bad
        assert "not valid" in response.text
    renewal_with_invite_token = browser.get(f"/invitations/renew/{token}")
    assert renewal_with_invite_token.status_code == 404
    browser.sign_in(link, seed.accountant)
    page = browser.get(link)
    posted = browser.http.post(f"/invitations/{bad_signature}/accept", data={"csrf_token": csrf_of(page.text)})
    assert posted.status_code == 404
    assert roster(cli, seed.firm) == []


def test_signed_in_as_someone_else(server, make_browser, cli, seed, mailbox):
    cli(
        "staff", "add", "paul@tremblay.example", "--name", "Paul Roy", "--firm", seed.firm,
        "--password-stdin", input=PASSWORD + "\n",
    )
    link = invite(cli, mailbox, seed)
    browser = make_browser()
    browser.sign_in(link, "paul@tremblay.example")
    page = browser.get(link)
    assert seed.accountant in page.text and "paul@tremblay.example" in page.text
    assert "Sign out and continue" in page.text and "Accept invitation" not in page.text
    # Forcing the POST as the wrong account is refused and changes nothing.
    assert browser.http.post(link + "/accept", data={"csrf_token": csrf_of(page.text)}).status_code == 403
    assert roster(cli, seed.firm) == [] and invitations(cli)[0]["status"] == "pending"
    # Sign out and continue: back on the link, signed out, with the sign-in form.
    out = browser.submit(link, "/sign-out", next=httpx_path(link))
    assert out.status_code == 303 and out.headers["Location"] == httpx_path(link)
    again = browser.get(link)
    assert 'name="password"' in again.text and "Sign out and continue" not in again.text


def httpx_path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_posts_without_a_valid_csrf_token_are_refused(server, make_browser, cli, seed, mailbox):
    link = invite(cli, mailbox, seed)
    browser = make_browser()
    browser.sign_in(link, seed.accountant)
    assert browser.http.post(link + "/accept", data={}).status_code == 403
    assert browser.http.post(link + "/accept", data={"csrf_token": "forged"}).status_code == 403
    # A token from another browser is bound to that browser's cookie, not this one.
    other = make_browser()
    foreign_token = csrf_of(other.get(link).text)
    assert browser.http.post(link + "/accept", data={"csrf_token": foreign_token}).status_code == 403
    assert roster(cli, seed.firm) == []


def test_wrong_password_does_not_sign_in(server, browser, cli, seed, mailbox):
    link = invite(cli, mailbox, seed)
    response = browser.sign_in(link, seed.accountant, password="not the password")
    assert response.status_code == 401
    assert "incorrect" in response.text
    assert "cabinet_session" not in browser.http.cookies
    unknown = browser.sign_in(link, "nobody@nowhere.example")
    assert unknown.status_code == 401


def test_pages_follow_accept_language_then_the_users_locale(server, make_browser, cli, seed, mailbox):
    link = invite(cli, mailbox, seed)
    french = make_browser("fr-CA,fr;q=0.9,en;q=0.5")
    page = french.get(link)
    assert '<html lang="fr">' in page.text
    assert '<label for="email">Courriel</label>' in page.text
    assert '<label for="password">Mot de passe</label>' in page.text
    english = make_browser("en-US,en;q=0.9")
    assert '<label for="email">Email</label>' in english.get(link).text

    cli(
        "staff", "add", "sophie@tremblay.example", "--name", "Sophie Roy", "--firm", seed.firm, "--locale", "fr",
        "--password-stdin", input=PASSWORD + "\n",
    )
    link2 = invite(cli, mailbox, seed, "sophie@tremblay.example")
    english.sign_in(link2, "sophie@tremblay.example")
    # Signed in, the user's own language wins over the browser's.
    assert "Accepter l'invitation" in english.get(link2).text


def test_accepts_pressed_at_once_are_each_written_once(server, make_browser, cli, seed, mailbox, env):
    """Accepts in flight together are written together (one unit, one commit: ``web.invitations``):
    each still gets its own 303 only once durable, its own roster entry, event and two notices."""
    companies = [seed.company] + [f"Atelier {n}" for n in range(5)]
    for n, company in enumerate(companies[1:]):
        cli("company", "add", company, "--admin-email", f"admin{n}@atelier.example", "--admin-name", f"Admin {n}",
            "--locale", "en")
    links = []
    for company in companies:
        cli("invitation", "send", "--company", company, "--email", seed.accountant)
    links = [link_in(m) for m in mailbox.wait(seed.accountant, subject="Invitation", count=len(companies))]
    browser = make_browser()
    browser.sign_in(links[0], seed.accountant)
    token = csrf_of(browser.get(links[0]).text)
    clients = [make_browser() for _ in links]
    for client in clients:
        client.http.cookies = browser.http.cookies
    start = threading.Barrier(len(links))

    def press(client: Browser, link: str) -> int:
        start.wait()
        return client.http.post(link + "/accept", data={"csrf_token": token}).status_code

    with ThreadPoolExecutor(len(links)) as pool:
        codes = list(pool.map(press, clients, links))
    assert codes == [303] * len(links)
    assert sorted(c["company"] for c in roster(cli, seed.firm)) == sorted(companies)
    assert env.sql("SELECT DISTINCT state FROM invitations") == [("accepted",)]
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'")[0][0] == len(links)
    assert env.sql("SELECT count(*) FROM outbox WHERE kind IN ('invitation_accepted', 'client_added')")[0][0] \
        == 2 * len(links)
    # A second press of each is refused: nothing is written twice.
    assert browser.http.post(links[0] + "/accept", data={"csrf_token": token}).status_code == 409


def test_a_revoke_between_the_accepts_read_and_its_write(server, browser, cli, seed, mailbox, env, monkeypatch):
    """The accept is planned on a read, written later with the others in flight: a revoke in between
    makes its guarded write find nothing, and the accept, decided again in the lock, is refused (409)."""
    link = invite(cli, mailbox, seed)
    browser.sign_in(link, seed.accountant)
    token = csrf_of(browser.get(link).text)
    roster_domain = server.cabinet.roster
    plan = roster_domain.plan_accept

    def read_then_revoke(*args):
        planned = plan(*args)
        assert planned is not None, "the read found the invitation acceptable"
        roster_domain.revoke_invitation(planned.read.invitation_id)
        return planned

    monkeypatch.setattr(roster_domain, "plan_accept", read_then_revoke)
    refused = browser.http.post(link + "/accept", data={"csrf_token": token})
    assert refused.status_code == 409 and "withdrew this invitation" in refused.text
    assert env.sql("SELECT state FROM invitations") == [("revoked",)]
    assert roster(cli, seed.firm) == []
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'invitation.accepted'")[0][0] == 0
