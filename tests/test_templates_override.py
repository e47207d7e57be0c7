"""Operator overrides: ``[templates] dir`` replaces built-in files one by one, for emails,
pages, static files and catalogues; SIGHUP makes a new override take effect in a running
`cabinet serve`; `cabinet mail preview` and `cabinet mail templates` show the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from click.testing import CliRunner

from daemon.cli import cli as cabinet_cli
from daemon.config import LOCALES
from daemon.template_folders import template_folders
from daemon.web.pages import Pages
from mailer.maildir import text_body
from mailer.render import email_names
from mailer.samples import SAMPLES
from tests.conftest import PASSWORD, Browser, Cli, Env, Mailbox, RunningServer, Seed, link_in, write_config

BUILTIN_EMAILS = Path(__file__).resolve().parent.parent / "templates" / "email"
# Generous: the machine running the suite may be busy; every wait ends as soon as its condition holds.
WAIT = 120.0


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """This module's instances read overrides from ``overrides/``, next to their config file."""
    (tmp_path / "overrides").mkdir()
    return write_config(tmp_path, '\n[templates]\ndir = "overrides"\n')


@pytest.fixture
def overrides(env: Env) -> Path:
    return env.root / "overrides"


def put(root: Path, relative: str, content: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")


def run_cli(*args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(cabinet_cli, list(args))
    assert result.exit_code == expect, f"cabinet {' '.join(args)} exited {result.exit_code}\n{result.output}"
    return result.output


# --- emails ------------------------------------------------------------------


def test_every_email_has_sample_facts_and_renders_in_both_languages(env: Env) -> None:
    names = email_names(BUILTIN_EMAILS / "en")
    assert sorted(SAMPLES) == names
    for locale in LOCALES:
        assert email_names(BUILTIN_EMAILS / locale) == names
    for name in names:
        for locale in LOCALES:
            output = run_cli("--config", str(env.config_path), "mail", "preview", name, "--locale", locale)
            # Emails about a company name it (accounts emails, like a password reset, have none).
            named = "Boulangerie Roy" in output or "company" not in SAMPLES[name]
            assert output.startswith("Subject: ") and named, (name, locale, output)


def test_an_override_replaces_one_file_of_a_sent_email(cli: Cli, seed: Seed, overrides: Path, env: Env,
                                                      mailbox: Mailbox) -> None:
    put(overrides, "email/en/invitation.subject", "{{ company }} would like you to keep its books\n")
    put(overrides, "email/layout.html", "<html><body>{% block content %}{% endblock %}<p>Tremblay CPA, Québec</p>"
                                        "</body></html>\n")
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    cli("mail", "flush")
    [message] = mailbox.wait(seed.accountant, timeout=WAIT)
    assert message["Subject"] == "Boulangerie Roy would like you to keep its books"
    # The other files are still the built-in ones.
    assert "invites you to be their accountant" in text_body(message)
    html = next(part for part in message.walk() if part.get_content_type() == "text/html").get_content()
    assert "Tremblay CPA, Québec" in html and "Accept invitation" in html


def test_preview_renders_with_the_override_and_given_facts(env: Env, overrides: Path) -> None:
    put(overrides, "email/fr/invitation.subject", "{{ company }} vous invite\n")
    config = ["--config", str(env.config_path)]
    output = run_cli(*config, "mail", "preview", "invitation", "--locale", "fr", "--context", '{"company": "Acme"}')
    assert output.splitlines()[0] == "Subject: Acme vous invite"
    assert "Acme" in output.split("\n", 2)[2]  # the built-in text part, with the given fact
    text = run_cli(*config, "mail", "preview", "invitation", "--locale", "en", "--text")
    assert not text.startswith("Subject:") and "Olivia Roy" in text
    html = run_cli(*config, "mail", "preview", "invitation", "--locale", "en", "--html")
    assert html.lstrip().startswith("<!DOCTYPE html>")
    # A date given as JSON text is read as a date.
    dated = run_cli(*config, "mail", "preview", "invitation", "--text", "--context", '{"expires_at": "2031-07-04T12:00"}')
    assert "2031" in dated
    # Deadlines read from the sample's own moment, as when the email is sent: ahead, not months ago.
    assert "(dans 4 semaines)" in output and "il y a" not in output
    reminder = run_cli(*config, "mail", "preview", "transfer_reminder", "--locale", "en")
    assert reminder.startswith("Subject: Reminder: 4 weeks left") and "(in 4 weeks)" in reminder and " ago" not in reminder
    path = Path(run_cli(*config, "mail", "preview", "invitation", "--open", "--context", '{"company": "Acme"}').strip())
    try:
        assert path.suffix == ".html" and "Acme" in path.read_text(encoding="utf-8")
    finally:
        path.unlink()


def test_preview_refuses_bad_input_with_one_line(env: Env, overrides: Path) -> None:
    config = ["--config", str(env.config_path)]
    unknown = run_cli(*config, "mail", "preview", "invitaton", expect=2)
    assert "Did you mean 'invitation'?" in unknown
    assert "not valid JSON" in run_cli(*config, "mail", "preview", "invitation", "--context", "{company", expect=2)
    assert "JSON object" in run_cli(*config, "mail", "preview", "invitation", "--context", "[1]", expect=2)
    bad_date = run_cli(*config, "mail", "preview", "invitation", "--context", '{"expires_at": "soon"}', expect=1)
    assert "expires_at must be a date" in bad_date
    put(overrides, "email/en/invitation.txt", "Hello {{ company }\n")
    broken = run_cli(*config, "mail", "preview", "invitation", "--locale", "en", expect=1)
    assert "invitation.txt line 1" in broken and "Traceback" not in broken
    put(overrides, "email/en/invitation.txt", "Hello {{ firm_logo }}\n")
    missing = run_cli(*config, "mail", "preview", "invitation", "--locale", "en", expect=1)
    assert "'firm_logo' is undefined" in missing and "--context" in missing


def test_templates_lists_which_file_wins(env: Env, overrides: Path) -> None:
    put(overrides, "email/fr/invitation.html", "x")
    put(overrides, "email/fr/invitaton.html", "a typo: no email uses it")
    config = ["--config", str(env.config_path)]
    rows = json.loads(run_cli(*config, "mail", "templates", "--json"))
    by_file = {row["file"]: row for row in rows}
    names = email_names(BUILTIN_EMAILS / "en")
    assert len([row for row in rows if row["source"] == "built-in"]) == len(names) * len(LOCALES) * 3 + 2 - 1
    assert by_file["email/fr/invitation.html"]["source"] == "override"
    assert by_file["email/fr/invitation.html"]["path"] == str(overrides / "email/fr/invitation.html")
    assert by_file["email/en/invitation.html"]["source"] == "built-in"
    assert by_file["email/fr/invitaton.html"]["source"] == "unused"
    table = run_cli(*config, "mail", "templates", "--overridden")
    assert str(overrides / "email/fr/invitation.html") in table and "unused" in table
    assert "email/en/invitation.html" not in table


def test_templates_dir_that_is_not_a_folder_is_a_config_error(tmp_path: Path) -> None:
    env = write_config(tmp_path, '\n[templates]\ndir = "no-such-folder"\n')
    output = run_cli("--config", str(env.config_path), "mail", "templates", expect=78)
    assert f"[templates] dir {tmp_path / 'no-such-folder'} is not a folder" in output
    run_cli("--config", str(env.config_path), "init")
    run_cli("--config", str(env.config_path), "firm", "list", expect=78)


def test_without_templates_dir_everything_is_built_in(tmp_path: Path) -> None:
    env = write_config(tmp_path)
    output = run_cli("--config", str(env.config_path), "mail", "templates")
    assert "every file is built-in" in output
    assert run_cli("--config", str(env.config_path), "mail", "templates", "--overridden").splitlines()[-1] == "(none)"


# --- pages, static files, catalogues ---------------------------------------------


def test_pages_static_files_and_catalogues_follow_the_override(server: RunningServer, env: Env,
                                                              overrides: Path) -> None:
    with httpx.Client(base_url=env.base_url, timeout=WAIT) as http:
        css = http.get("/static/cabinet.css")
        assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]
        builtin_css = css.text
        # Nothing outside the static folders is reachable.
        for path in ("/static/../layout.html", "/static/%2e%2e/layout.html", "/static/..%2flayout.html",
                     "/static/nothing.css", "/static//etc/passwd"):
            assert http.get(path).status_code == 404, path

        put(overrides, "web/static/logo.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>")
        put(overrides, "web/static/cabinet.css", "body { color: #123456; }\n")
        assert http.get("/static/logo.svg").status_code == 200
        replaced = http.get("/static/cabinet.css")
        assert replaced.text == "body { color: #123456; }\n" and replaced.text != builtin_css

        put(overrides, "web/link_invalid.html", "<p>Tremblay CPA: this link no longer works.</p>\n")
        fr_po = (BUILTIN_EMAILS.parent / "web" / "locale" / "fr.po").read_text(encoding="utf-8")
        assert 'msgstr "Se connecter"' in fr_po
        put(overrides, "web/locale/fr.po", fr_po.replace('msgstr "Se connecter"', 'msgstr "Entrer au cabinet"'))
        # Pages are compiled at start-up: the SIGHUP path makes new files count.
        server.service.reload()
        invalid = http.get("/invitations/not-a-token")
        assert invalid.status_code == 404 and "Tremblay CPA: this link no longer works." in invalid.text
        sign_in = http.get("/sign-in", headers={"Accept-Language": "fr"})
        assert "Entrer au cabinet" in sign_in.text and "Se connecter<" not in sign_in.text


# --- SIGHUP in a real `cabinet serve` ------------------------------------------------


class ServeProcess:
    """`cabinet serve` as a child process, its output collected to print when something fails."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--config", str(env.config_path), "serve"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            if self.process.poll() is not None:
                raise AssertionError(f"cabinet serve exited {self.process.returncode} before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {WAIT:.0f} s; cabinet serve said:\n{self.output()}")
            time.sleep(0.05)

    def wait_ready(self) -> None:
        # One client for every poll (httpx.get builds one, TLS context included, each time: CPU the
        # starting server needs on a loaded machine).
        with httpx.Client(timeout=WAIT) as poller:
            def ready() -> bool:
                try:
                    return poller.get(f"{self.env.base_url}/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            self.wait_for("readiness", ready)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(WAIT)
        return code


@pytest.fixture
def serve(env: Env, cli: Cli) -> Iterator[ServeProcess]:
    process = ServeProcess(env)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def accept(browser: Browser, cli: Cli, mailbox: Mailbox, serve: ServeProcess, company: str, email: str) -> None:
    cli("invitation", "send", "--company", company, "--email", email)
    link = link_in(mailbox.wait(email, subject=company, timeout=WAIT)[-1])
    browser.sign_in(link, email, PASSWORD)
    response = browser.submit(link, link + "/accept")
    assert response.status_code == 303, f"{response.status_code} {response.text}\n{serve.output()}"


def test_sighup_makes_a_new_override_count_in_a_running_serve(serve: ServeProcess, cli: Cli, seed: Seed, env: Env,
                                                             overrides: Path, mailbox: Mailbox) -> None:
    cli("company", "add", "Café Nord", "--admin-email", "paul@nord.example", "--admin-name", "Paul Nord", "--locale", "en")
    browser = Browser(env.base_url)
    try:
        # serve renders (and caches) the built-in "accepted" email once...
        accept(browser, cli, mailbox, serve, seed.company, seed.accountant)
        [before] = mailbox.wait(seed.admin, subject="accepted your invitation", timeout=WAIT)
        assert before["Subject"] == f"Marie Tremblay accepted your invitation for {seed.company}"

        # ...then an override appears and serve is told with SIGHUP.
        put(overrides, "email/en/invitation_accepted.subject", "{{ firm }} now keeps the books of {{ company }}\n")
        reloaded = len([line for line in serve.lines if "templates" in line and "reloaded" in line])
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for("reload message", lambda: len(
            [line for line in serve.lines if "templates" in line and "reloaded" in line]) > reloaded)

        accept(browser, cli, mailbox, serve, "Café Nord", seed.accountant)
        [after] = mailbox.wait("paul@nord.example", subject="now keeps the books", timeout=WAIT)
        assert after["Subject"] == "Tremblay CPA now keeps the books of Café Nord"
        assert "accepted your invitation for Café Nord" in text_body(after)  # the built-in text part
    finally:
        browser.close()
    code = serve.stop()
    assert code == 0, serve.output()


def test_a_shared_page_whose_template_shows_now_follows_the_minute(server: RunningServer, env: Env, cli: Cli,
                                                                   seed: Seed, mailbox: Mailbox,
                                                                   overrides: Path) -> None:
    """The signed-out invitation page is kept once rendered; an operator's template that shows ``now``
    (here from a template it includes) keeps it for the minute only."""
    put(overrides, "web/invitation.html", '{% extends "layout.html" %}{% block content %}'
                                          '<p>{{ invitation.company }}</p>{% include "_now.html" %}{% endblock %}\n')
    put(overrides, "web/_now.html", "<p>Shown on {{ now|datetime }}</p>\n")
    server.service.reload()
    assert server.service.pages.reads_clock("invitation.html")
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation", count=1, timeout=WAIT)[-1])
    server.clock.freeze()  # after the email: the CLI queued it on the system clock
    with httpx.Client(base_url=env.base_url, timeout=WAIT) as http:
        first = http.get(link).text
        assert "Shown on" in first and seed.company in first
        server.clock.advance(minutes=2)
        later = http.get(link).text
        assert "Shown on" in later and later != first


def test_which_templates_read_the_clock(env: Env, overrides: Path) -> None:
    """Naming ``now`` anywhere in a page's tree keeps the minute in a kept page's key; so does what
    cannot be known (a template named by an expression) and a relative-time filter where no ``now``
    reaches it (a macro imported without context)."""
    put(overrides, "web/a_direct.html", "{{ now }}")
    put(overrides, "web/a_extends.html", '{% extends "a_direct.html" %}')
    put(overrides, "web/a_dynamic.html", "{% include which %}")
    put(overrides, "web/a_macro.html", "{% macro left(at) %}{{ at|remaining }}{% endmacro %}")
    put(overrides, "web/a_imported.html", '{% import "a_macro.html" as m %}{{ m.left(at) }}')
    put(overrides, "web/a_imported_with.html", '{% import "a_macro.html" as m with context %}{{ m.left(at) }}')
    put(overrides, "web/a_relative.html", '{{ at|deadline }} {% include ["_labels.html"] %}')
    pages = Pages(template_folders(overrides))
    assert [pages.reads_clock(f"a_{n}.html") for n in ("direct", "extends", "dynamic", "imported")] == [True] * 4
    assert not pages.reads_clock("a_imported_with.html") and not pages.reads_clock("a_relative.html")
    assert not pages.reads_clock("invitation.html")
