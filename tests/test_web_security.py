"""The link handler against a hostile browser or client: each attack is refused with a clear
answer and changes nothing in the database. Real daemon, real HTTP (httpx), real database."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from daemon.app import build
from daemon.config import load_config
from daemon.tokens import Purpose
from tests.conftest import (
    ServeProcess,
    PASSWORD,
    Browser,
    Cli,
    Env,
    FakeClock,
    Mailbox,
    RunningServer,
    Seed,
    any_link_in,
    csrf_of,
)

SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy")


def count(env: Env, table: str) -> int:
    return env.sql(f"SELECT count(*) FROM {table}")[0][0]


def manage_link(cli: Cli, mailbox: Mailbox, seed: Seed) -> str:
    cli("company", "send-link", seed.company)
    return any_link_in(mailbox.wait(seed.admin, subject="Manage")[-1])


# -- cross-site posts ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"},
    ],
    ids=["evil-origin", "null-origin", "fetch-cross-site", "fetch-same-site", "fetch-lies-origin-tells"],
)
def test_a_post_from_another_site_is_refused_and_changes_nothing(
    headers: dict[str, str], server, browser: Browser, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env
):
    link = manage_link(cli, mailbox, seed)
    token = csrf_of(browser.get(link).text)  # even with a valid CSRF token
    invitations, outbox, events = count(env, "invitations"), count(env, "outbox"), count(env, "events")
    refused = browser.http.post(link + "/invite", data={"csrf_token": token, "email": "x@evil.example"}, headers=headers)
    assert refused.status_code == 403
    assert "This form was sent from another website, so Cabinet did not act on it" in refused.text
    assert "<html" in refused.text and 'href="/static/cabinet.css"' in refused.text  # the styled error page
    assert all(name in refused.headers for name in SECURITY_HEADERS)
    assert (count(env, "invitations"), count(env, "outbox"), count(env, "events")) == (invitations, outbox, events)
    # The same form from Cabinet's own page acts.
    own = browser.http.post(
        link + "/invite", data={"csrf_token": token, "email": "y@tremblay.example"},
        headers={"Origin": env.base_url, "Sec-Fetch-Site": "same-origin"},
    )
    assert own.status_code == 303, own.text
    assert count(env, "invitations") == invitations + 1


def test_sign_in_from_another_site_is_refused(server, browser: Browser, seed: Seed, env: Env):
    token = browser.csrf()
    refused = browser.http.post(
        "/sign-in", data={"csrf_token": token, "email": seed.accountant, "password": PASSWORD, "next": "/"},
        headers={"Origin": "null"},
    )
    assert refused.status_code == 403 and count(env, "web_sessions") == 0


# -- the CSRF browser id -----------------------------------------------------------------------

def test_a_browser_id_the_client_chose_is_never_accepted(server, seed: Seed, env: Env):
    chosen = "A" * 43  # what the old code took as a browser id, unchecked
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        page = client.get("/sign-in", headers={"Cookie": f"cabinet_browser={chosen}"})
        issued = page.cookies.get("cabinet_browser")
        assert issued and issued != chosen  # the server issues its own, signed id
        posted = client.post(
            "/sign-in",
            data={"csrf_token": csrf_of(page.text), "email": seed.accountant, "password": PASSWORD, "next": "/"},
            headers={"Cookie": f"cabinet_browser={chosen}"},
        )
    assert posted.status_code == 403
    assert "did not come from this browser" in posted.text
    assert count(env, "web_sessions") == 0


def test_the_browser_id_is_rotated_at_sign_in(server, browser: Browser, seed: Seed, env: Env):
    page = browser.get("/sign-in")
    before, token = browser.http.cookies["cabinet_browser"], csrf_of(page.text)
    signed_in = browser.http.post(
        "/sign-in", data={"csrf_token": token, "email": seed.accountant, "password": PASSWORD, "next": "/"}
    )
    assert signed_in.status_code == 303
    after = browser.http.cookies["cabinet_browser"]
    assert after != before
    # A token from before sign-in (one an attacker could have planted) no longer works.
    stale = browser.http.post("/sign-out", data={"csrf_token": token, "next": "/"})
    assert stale.status_code == 403 and count(env, "web_sessions") == 1
    fresh = browser.http.post("/sign-out", data={"csrf_token": browser.csrf(), "next": "/"})
    assert fresh.status_code == 303 and count(env, "web_sessions") == 0


def test_anonymous_pages_without_a_form_set_no_cookie(server, env: Env):
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        for path in ("/healthz", "/readyz", "/static/cabinet.css", "/no-such-page"):
            response = client.get(path)
            assert "set-cookie" not in response.headers, path
        assert "set-cookie" in client.get("/sign-in").headers  # a form: it needs the CSRF cookie
    # A forged manage link's page is the other links' kind (/transfers/…, /invitations/…): what went wrong
    # and where to go next, with the layout's language form, so it may set the browser cookie as they do.
    assert httpx.get(f"{env.base_url}/company/forged-token", timeout=60).status_code == 404


# -- redirects after sign-in -----------------------------------------------------------------------

BAD_NEXT = [
    "/\t/evil.example/",
    "//evil.example/",
    "/\\evil.example",
    "\\\\evil.example",
    "https://evil.example/",
    "/%09/evil.example/",
    "/%2F%2Fevil.example",
    "/%5Cevil.example",
    "/%252F%252Fevil.example",
    "/x\r\nSet-Cookie: cabinet_session=planted",
    "/x%0d%0aSet-Cookie:%20a=b",
    " /x",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("target", BAD_NEXT)
def test_next_goes_only_to_a_path_on_this_site(target: str, server, browser: Browser, seed: Seed, env: Env):
    form = browser.http.get("/sign-in", params={"next": target})
    assert form.status_code == 200
    assert 'name="next" value="/"' in form.text
    signed_in = browser.http.post(
        "/sign-in",
        data={"csrf_token": csrf_of(form.text), "email": seed.accountant, "password": PASSWORD, "next": target},
    )
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/"
    assert "planted" not in str(signed_in.headers)


def test_a_same_site_next_is_kept(server, browser: Browser, seed: Seed):
    response = browser.post("/sign-in", email=seed.accountant, password=PASSWORD, next="/company/a-b.c_d?done=invite")
    assert response.status_code == 303 and response.headers["Location"] == "/company/a-b.c_d?done=invite"


def test_cr_lf_in_next_on_the_raw_wire_does_not_break_the_connection(server, env: Env):
    with socket.create_connection(("127.0.0.1", env.http_port), timeout=30) as sock:
        sock.sendall(b"GET /sign-in?next=/x%0d%0aSet-Cookie:a=b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"\r\nSet-Cookie: a=b" not in answer


# -- headers on every response -----------------------------------------------------------------------

def test_every_response_carries_the_security_headers_and_no_version(server, env: Env):
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        answers = {
            "page": client.get("/sign-in"),
            "static": client.get("/static/cabinet.css"),
            "health": client.get("/healthz"),
            "404": client.get("/no-such-page"),
            "405": client.put("/sign-in"),
            "413": client.post("/sign-in", content=b"x" * 200_000,
                               headers={"Content-Type": "application/x-www-form-urlencoded"}),
            "invalid link": client.get("/invitations/forged"),
        }
    assert answers["404"].status_code == 404 and answers["405"].status_code == 405
    assert answers["413"].status_code == 413
    for what, response in answers.items():
        for name in SECURITY_HEADERS:
            assert name in response.headers, f"{what}: no {name}"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Server"] == "Cabinet", f"{what}: Server: {response.headers.get('Server')}"
        assert "Strict-Transport-Security" not in response.headers  # plain http: HSTS would mean nothing


@pytest.fixture
def https_server(env: Env, cli: Cli, clock: FakeClock) -> Iterator[RunningServer]:
    text = env.config_path.read_text(encoding="utf-8")
    env.config_path.write_text(text.replace("[http]\n", '[http]\npublic_url = "https://cabinet.example"\n', 1))
    cli("config", "set-public-url", "https://cabinet.example")  # the instance's links move there too
    running = RunningServer(env, clock)
    running.start()
    yield running
    running.stop()


def test_over_https_cookies_are_host_only_and_hsts_is_sent(https_server, seed: Seed, env: Env):
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        page = client.get("/sign-in")
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("__Host-cabinet_browser=") and "Secure" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie
        assert client.get("/no-such-page").headers["Strict-Transport-Security"].startswith("max-age=")
        # Origin is checked against public_url, whatever address the request came in on.
        refused = client.post("/sign-in", data={"email": seed.accountant, "password": PASSWORD},
                              headers={"Origin": env.base_url})
        assert refused.status_code == 403


# -- metrics -----------------------------------------------------------------------------------

def test_metrics_are_only_on_their_own_listener(server: RunningServer, env: Env):
    assert httpx.get(f"{env.base_url}/metrics", timeout=60).status_code == 404
    own = httpx.get(f"http://127.0.0.1:{server.service.metrics_port}/metrics", timeout=60)
    assert own.status_code == 200 and "cabinet_outbox_depth" in own.text


def test_metrics_can_be_turned_off(tmp_path: Path):
    (tmp_path / "c.toml").write_text('[metrics]\nlisten = ""\n')
    assert load_config(tmp_path / "c.toml", env={}).metrics.listen == ""
    assert load_config(None, env={}).metrics.listen == "127.0.0.1:9108"
    example = load_config(Path(__file__).parent.parent / "config.example.toml", env={})
    defaults = load_config(None, env={})
    assert (example.metrics, example.limits) == (defaults.metrics, defaults.limits)
    assert example.http.trusted_proxies == defaults.http.trusted_proxies == ()


# -- the manage link's invitations -----------------------------------------------------------------

def test_a_manage_link_sends_at_most_the_daily_number_of_invitations(
    server, browser: Browser, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env
):
    link = manage_link(cli, mailbox, seed)
    for n in range(5):
        sent = browser.submit(link, link + "/invite", email=f"outsider{n}@elsewhere.example")
        assert sent.status_code == 303, sent.text
    invitations, outbox = count(env, "invitations"), count(env, "outbox")
    refused = browser.submit(link, link + "/invite", email="outsider9@elsewhere.example")
    assert refused.status_code == 429
    assert "has already sent 5 invitations from a manage link in the last 24 hours" in refused.text
    assert (count(env, "invitations"), count(env, "outbox")) == (invitations, outbox)
    # The firm (CLI) is not limited by the manage link's rule.
    cli("invitation", "send", "--company", seed.company, "--email", "outsider9@elsewhere.example")


# -- logs --------------------------------------------------------------------------------------

def test_tokens_of_every_purpose_are_shortened_in_the_real_log(env: Env, cli: Cli, seed: Seed):
    cabinet = build(load_config(env.config_path))
    try:
        tokens = {
            "/payment/": cabinet.signer.sign(Purpose.PAYMENT, [5]),  # "WzVd." + …: the short payload
            "/company/": cabinet.signer.sign(Purpose.MANAGE, ["company", 1, seed.admin]),
            "/setup/": cabinet.signer.sign(Purpose.SETUP, [1, "n"]),
            "/invitations/": cabinet.signer.sign(Purpose.INVITE, [1, "n"]),
            "/invitations/renew/": cabinet.signer.sign(Purpose.INVITE, ["renew", 1, "n"]),
            "/transfers/": cabinet.signer.sign(Purpose.TRANSFER, [1, "n"]),
        }
    finally:
        cabinet.close()
    process = ServeProcess(env).start()  # its output goes to a log file we read below
    try:
        for prefix, token in tokens.items():
            httpx.get(f"{env.base_url}{prefix}{token}", timeout=60)
        httpx.get(f"{env.base_url}/sign-in", params={"next": "/payment/" + tokens["/payment/"]}, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
    output = process.output()
    assert "/payment/" in output  # the requests were logged
    for prefix, token in tokens.items():
        assert token not in output, f"{prefix} token logged whole"
        assert token[:20] not in output, f"{prefix} token logged nearly whole"


@pytest.mark.parametrize(
    "public_url, origin",
    [("https://cabinet.example:443", "https://cabinet.example"), ("https://Cabinet.Example/base", "https://cabinet.example"),
     ("http://127.0.0.1:8080", "http://127.0.0.1:8080"), ("http://[::1]:8080", "http://[::1]:8080")],
)
def test_the_expected_origin_is_public_url_as_a_browser_writes_it(public_url: str, origin: str):
    from daemon.config import HttpConfig
    from daemon.web.security import WebSecurity

    assert WebSecurity.from_config(HttpConfig("127.0.0.1:8080", public_url), None, "en", "UTC").origin == origin  # type: ignore[arg-type]


@pytest.mark.parametrize("public_url", ["http://127.0.0.1:8080", "https://cabinet.example"])
def test_the_browser_cookie_header_is_the_one_aiohttp_writes(public_url: str):
    """The browser cookie is written as a header string (no cookie jar per response): the same bytes
    aiohttp's ``set_cookie`` gives for the same settings, over http and https."""
    from aiohttp import web

    from daemon.config import HttpConfig
    from daemon.web.security import WebSecurity

    security = WebSecurity.from_config(HttpConfig("127.0.0.1:8080", public_url), None, "en", "UTC")  # type: ignore[arg-type]
    value = "ImJyb3dzZXItaWQi.aSxq0A.dGhlLXNpZ25hdHVyZS1ieXRlcw"
    ours, theirs = web.Response(), web.Response()
    security.set_browser_cookie(ours, value)
    security.set_cookie(theirs, security.browser_cookie, value)
    assert ours.headers.getall("Set-Cookie") == [theirs.cookies[security.browser_cookie].output(header="")[1:]]
    assert ("Strict-Transport-Security" in security.headers) == public_url.startswith("https")


def test_a_page_carries_each_security_header_once(server, env: Env):
    page = httpx.get(f"{env.base_url}/sign-in", timeout=60)
    for name in SECURITY_HEADERS:
        assert len(page.headers.get_list(name)) == 1, name
    assert page.headers.get_list("Server") == ["Cabinet"]
    assert len(page.headers.get_list("Set-Cookie")) == 1
