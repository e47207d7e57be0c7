"""Signing in under attack: guessing is slowed then locked, per address and per client IP, the
answers never tell which addresses have accounts, and a flood of password checks cannot take
the threads the rest of the daemon needs. Everything against the real daemon and database."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from daemon.errors import Busy
from tests.conftest import PASSWORD, Browser, Cli, Env, FakeClock, Mailbox, RunningServer, Seed, write_config
from tests.inbound_helpers import deliver, reply

WRONG = "not the password at all"


def failures(env: Env, key: str) -> int:
    return env.sql("SELECT count(*) FROM sign_in_failures WHERE key = :key", key=key)[0][0]


def sessions(env: Env) -> int:
    return env.sql("SELECT count(*) FROM web_sessions")[0][0]


def attempt(browser: Browser, email: str, password: str = WRONG, **headers: str) -> httpx.Response:
    token = browser.csrf()
    return browser.http.post(
        "/sign-in", data={"csrf_token": token, "email": email, "password": password, "next": "/"}, headers=headers
    )


def without_tokens(html: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]+"', "", html)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    # Small limits so a test reaches them in a few posts; the rule is the same as with the defaults.
    return write_config(tmp_path, "\n[limits]\nsign_in_failures_per_address = 6\nsign_in_failures_per_ip = 8\n")


def test_guessing_is_slowed_then_locked_even_for_the_right_password(server, browser: Browser, seed: Seed,
                                                                    clock: FakeClock, env: Env):
    clock.freeze()  # the delays are seconds long: a slow machine must not let an early attempt through
    key = f"email:{seed.accountant}"
    for _ in range(3):  # typos are free
        assert attempt(browser, seed.accountant).status_code == 401
    # The fourth must wait: refused without checking the password, and not counted.
    early = attempt(browser, seed.accountant, PASSWORD)
    assert early.status_code == 429, early.text
    assert "Wait 1 second and try again" in early.text and early.headers["Retry-After"] == "1"
    assert failures(env, key) == 3 and sessions(env) == 0
    # Each further failure doubles the wait.
    waits = []
    while failures(env, key) < 6:
        refused = attempt(browser, seed.accountant)
        if refused.status_code == 429:
            waits.append(int(refused.headers["Retry-After"]))
            clock.advance(seconds=waits[-1])
            continue
        assert refused.status_code == 401
    assert waits == [1, 2, 4]
    # Locked: the right password is refused too, with a clear message.
    locked = attempt(browser, seed.accountant, PASSWORD)
    assert locked.status_code == 429
    assert "Sign-in for this address is locked after too many failed attempts" in locked.text
    assert "<html" in locked.text  # a styled page, not a bare status
    assert sessions(env) == 0 and "cabinet_session" not in browser.http.cookies
    # The lock ends when the failures leave the 15-minute window; then the right password works.
    clock.advance(minutes=15)
    signed_in = attempt(browser, seed.accountant, PASSWORD)
    assert signed_in.status_code == 303 and sessions(env) == 1
    assert failures(env, key) == 0


def test_unknown_and_known_addresses_get_the_same_answers(server, make_browser, seed: Seed, env: Env,
                                                          clock: FakeClock):
    clock.freeze()
    known, unknown = seed.accountant, "nobody@tremblay.example"
    for round in range(4):
        answers = []
        for address in (known, unknown):
            response = attempt(make_browser(), address)
            answers.append((response.status_code, without_tokens(response.text).replace(address, "ADDRESS"),
                            sorted(response.headers.keys()), response.headers.get("Retry-After")))
        assert answers[0] == answers[1], f"round {round}: the answers tell the addresses apart"
    assert failures(env, f"email:{known}") == failures(env, f"email:{unknown}") == 3


def test_one_client_cannot_try_many_addresses(server, browser: Browser, seed: Seed, env: Env):
    # X-Forwarded-For is not believed from a peer that is not a configured proxy.
    for n in range(8):
        response = attempt(browser, f"guess{n}@tremblay.example", **{"X-Forwarded-For": f"198.51.100.{n}"})
        assert response.status_code == 401
    refused = attempt(browser, seed.accountant, PASSWORD, **{"X-Forwarded-For": "198.51.100.99"})
    assert refused.status_code == 429
    assert "Sign-in for your network address is locked" in refused.text
    assert sessions(env) == 0
    assert failures(env, "ip:127.0.0.1") == 8


@pytest.fixture
def behind_proxy(env: Env, cli: Cli, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.setenv("CABINET_HTTP_TRUSTED_PROXIES", "127.0.0.0/8")
    running = RunningServer(env, clock)
    running.start()
    yield running
    running.stop()


def test_behind_a_trusted_proxy_each_client_is_counted_separately(behind_proxy, seed: Seed, env: Env):
    browser = Browser(env.base_url)
    try:
        for n in range(8):
            assert attempt(browser, f"guess{n}@tremblay.example", **{"X-Forwarded-For": "203.0.113.7"}).status_code == 401
        # A client may prepend anything; the hop the proxy added (the rightmost untrusted one) counts.
        spoofed = attempt(browser, seed.accountant, PASSWORD, **{"X-Forwarded-For": "192.0.2.1, 203.0.113.7"})
        assert spoofed.status_code == 429 and "your network address" in spoofed.text
        other = attempt(browser, seed.accountant, PASSWORD, **{"X-Forwarded-For": "203.0.113.8"})
        assert other.status_code == 303
        assert failures(env, "ip:203.0.113.7") == 8 and failures(env, "ip:127.0.0.1") == 0
    finally:
        browser.close()


def test_a_full_password_pool_refuses_sign_ins_and_starves_nothing_else(
    server: RunningServer, browser: Browser, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env
):
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    invitation = mailbox.wait(seed.accountant, subject="Invitation")[0]
    reply_to = str(invitation["Reply-To"]).split("<")[-1].rstrip(">")
    executor = server.cabinet.passwords.executor
    release = threading.Event()
    # Occupy every worker and every waiting place of the password pool, until it refuses more.
    held = []
    while True:
        try:
            held.append(executor.submit(release.wait, 120))
        except Busy:
            break
    assert len(held) >= executor.capacity - 1  # (start-up's decoy hash may hold one place a moment)
    try:
        busy = attempt(browser, seed.accountant, PASSWORD)
        assert busy.status_code == 503, busy.text
        assert "busy checking other sign-ins" in busy.text and busy.headers["Retry-After"]
        assert failures(env, f"email:{seed.accountant}") == 0 and sessions(env) == 0
        # Meanwhile the database threads are free: readiness and the SMTP store still complete.
        ready = httpx.get(f"{env.base_url}/readyz", timeout=60)
        assert ready.status_code == 200 and ready.text == "ready\n"
        before = env.sql("SELECT count(*) FROM inbound")[0][0]
        refused = deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "Thanks, see you soon."))
        assert refused == {}
        assert env.sql("SELECT count(*) FROM inbound")[0][0] == before + 1
        assert not any(future.done() for future in held)  # the pool really was full throughout
    finally:
        release.set()
    for future in held:
        future.result(timeout=60)
    assert attempt(browser, seed.accountant, PASSWORD).status_code == 303
