"""The CLI against the real database: each command, its JSON, its errors and exit codes."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from daemon.cli import cli as cabinet_cli
from tests.conftest import PASSWORD, Cli, Env, Seed

COMMANDS = [
    [], ["init"], ["serve"], ["demo"], ["firm"], ["firm", "add"], ["firm", "list"], ["staff"], ["staff", "add"],
    ["staff", "list"], ["company"], ["company", "add"], ["company", "list"], ["invitation"],
    ["invitation", "send"], ["invitation", "revoke"], ["invitation", "list"], ["client"], ["client", "list"],
    ["mail"], ["mail", "list"], ["mail", "show"], ["mail", "flush"], ["mail", "retry"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cabinet")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cabinet_cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "--help" in result.output


def test_init_is_idempotent_and_keeps_the_key(env: Env, cli: Cli) -> None:
    keys = env.root / "data" / "secret_keys"
    first = keys.read_text()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    result = cli("init")
    assert "up to date" in result.output
    assert keys.read_text() == first
    assert json.loads(cli("firm", "list", "--json").output)[0]["name"] == "Tremblay CPA"


def test_init_refuses_a_new_key_when_the_database_has_firms(env: Env, cli: Cli) -> None:
    keys = env.root / "data" / "secret_keys"
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    sent_with = keys.read_text()
    keys.unlink()  # lost: links already sent were signed with it
    refused = cli("init", expect=78)
    assert "--new-signing-key" in refused.output and "Traceback" not in refused.output
    assert not keys.exists()
    made = cli("init", "--new-signing-key")
    assert "created signing key" in made.output
    assert keys.exists() and keys.read_text() != sent_with
    assert json.loads(cli("firm", "list", "--json").output)[0]["name"] == "Tremblay CPA"


def test_lists_print_json_arrays(cli: Cli, seed: Seed) -> None:
    for command in (["firm", "list"], ["staff", "list"], ["company", "list"], ["invitation", "list"],
                    ["client", "list", "--firm", seed.firm], ["mail", "list"]):
        output = json.loads(cli(*command, "--json").output)
        assert isinstance(output, list), command
    staff = json.loads(cli("staff", "list", "--json").output)
    assert staff[0]["email"] == seed.accountant and staff[0]["firms"] == [seed.firm]
    assert "password" not in json.dumps(staff)


def test_client_list_fields(cli: Cli, seed: Seed, env: Env) -> None:
    # Accepting goes through the domain the same way the web does; here via the roster directly.
    from daemon.app import build
    from daemon.config import load_config

    sent = cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output
    token = sent.split("/invitations/")[1].split()[0]
    cabinet = build(load_config(env.config_path))
    user_id = cabinet.roster.authenticate(seed.accountant, PASSWORD).id
    cabinet.roster.accept_invitation(token, user_id, None, channel="cli")
    cabinet.close()
    (client,) = json.loads(cli("client", "list", "--firm", seed.firm, "--json").output)
    assert {"name", "kind", "status", "billing", "company", "connected_at"} <= client.keys()
    assert client["company"] == seed.company


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["firm", "add", "Tremblay CPA", "--email", "x@y.example"], 4, "already exists"),
        (["firm", "add", "  ", "--email", "x@y.example"], 1, "cannot be empty"),
        (["firm", "add", "New", "--email", "not-an-address"], 1, "not a valid email address"),
        (["company", "add", "Boulangerie Roy", "--admin-email", "a@b.example"], 4, "already exists"),
        (["company", "add", "X", "--admin-email", "a@b.example", "--timezone", "Mars/Olympus"], 1, "unknown time zone"),
        (["invitation", "send", "--company", "Nope", "--email", "a@b.example"], 3, "no company named"),
        (["invitation", "send", "--company", "Boulangerie Roy", "--email", "a@"], 1, "not a valid email"),
        (["invitation", "revoke", "999"], 3, "no invitation 999"),
        (["client", "list", "--firm", "Nope"], 3, "no firm named"),
        (["staff", "add", "z@t.example", "--name", "Z", "--firm", "Nope", "--password-stdin"], 3, "no firm named"),
        (["company", "add", "Y", "--admin-email", "a@b.example", "--kind", "robot"], 2, "Invalid value"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(cli: Cli, seed: Seed, env: Env, args, code, message):
    before = env.sql("SELECT (SELECT count(*) FROM firms), (SELECT count(*) FROM companies), "
                     "(SELECT count(*) FROM users), (SELECT count(*) FROM invitations)")
    result = cli(*args, input=PASSWORD + "\n", expect=code)
    assert message in result.output
    assert "Traceback" not in result.output
    after = env.sql("SELECT (SELECT count(*) FROM firms), (SELECT count(*) FROM companies), "
                    "(SELECT count(*) FROM users), (SELECT count(*) FROM invitations)")
    assert before == after


def test_staff_password_rules_and_duplicates(cli: Cli, seed: Seed, env: Env) -> None:
    short = cli("staff", "add", "new@tremblay.example", "--name", "New", "--firm", seed.firm, "--password-stdin",
                input="short\n", expect=1)
    assert "at least 10 characters" in short.output
    dup = cli("staff", "add", "MARIE@tremblay.example", "--name", "Marie", "--firm", seed.firm, "--password-stdin",
              input=PASSWORD + "\n", expect=4)
    assert "already exists" in dup.output
    stored = env.sql("SELECT password_hash FROM users")
    assert len(stored) == 1 and stored[0][0].startswith("$argon2id$")


def test_names_and_addresses_are_normalised(cli: Cli, seed: Seed, env: Env) -> None:
    cli("firm", "add", "tremblay   cpa", "--email", "a@b.example", expect=4)
    cli("invitation", "send", "--company", "BOULANGERIE ROY", "--email", "  Marie@Tremblay.EXAMPLE ")
    assert env.sql("SELECT email FROM invitations") == [("marie@tremblay.example",)]


def test_mail_list_and_show_read_the_outbox_and_the_maildir(cli: Cli, seed: Seed) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    (queued,) = json.loads(cli("mail", "list", "--json").output)
    assert queued["state"] == "queued" and queued["attempts"] == 0 and queued["sent_at"] is None
    assert json.loads(cli("mail", "list", "--maildir", "--json").output) == []  # queued, not yet delivered
    assert "Sent 1 email." in cli("mail", "flush").output
    (mail,) = json.loads(cli("mail", "list", "--json").output)
    assert mail["id"] == queued["id"] and mail["state"] == "sent" and mail["attempts"] == 1
    assert seed.accountant in mail["to"] and mail["subject"].startswith("Invitation")
    shown = cli("mail", "show", str(mail["id"])).output
    assert "Accept invitation" in shown and "/invitations/" in shown and "sent, 1 attempt" in shown
    assert cli("mail", "show", mail["message_id"]).output == shown
    # The Maildir keeps its own files: the copy as delivered, with the envelope sender.
    (delivered,) = json.loads(cli("mail", "list", "--maildir", "--json").output)
    assert delivered["message_id"] == mail["message_id"] and delivered["id"] in mail["last_answer"]
    raw = cli("mail", "show", "--maildir", delivered["id"], "--raw").output
    # The Maildir records the VERP envelope sender, as a delivery agent would.
    assert re.search(r"Return-Path: <bounce\+[\w.-]+@cabinet\.example>", raw)
    assert re.search(r"Reply-To:\s*reply\+[\w.-]+@cabinet\.example", raw)
    assert re.search(r"Reply-To:\s*reply\+[\w.-]+@cabinet\.example", cli("mail", "show", "--raw", "1").output)
    missing = cli("mail", "show", "nope", expect=3)
    assert "no message" in missing.output
    assert "no message" in cli("mail", "show", "--maildir", "nope", expect=3).output
    assert "no message" in cli("mail", "show", "999", expect=3).output


def test_config_from_environment_variable_and_bad_config(env: Env, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(cabinet_cli, ["init"], env={"CABINET_CONFIG": str(env.config_path)})
    assert result.exit_code == 0 and str(env.root / "data") in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nlisten = 'nowhere'\n")
    result = runner.invoke(cabinet_cli, ["--config", str(bad), "firm", "list"])
    assert result.exit_code == 78 and "HOST:PORT" in result.output
    missing = runner.invoke(cabinet_cli, ["--config", str(tmp_path / "missing.toml"), "firm", "list"])
    assert missing.exit_code == 78 and "not found" in missing.output
    uninitialised = tmp_path / "fresh.toml"
    uninitialised.write_text("[storage]\ndata_dir = 'fresh'\n")
    result = runner.invoke(cabinet_cli, ["--config", str(uninitialised), "firm", "list"])
    assert result.exit_code == 78 and "cabinet init" in result.output
    # `client list --json` opens the database without building Cabinet: the same message.
    listed = runner.invoke(cabinet_cli, ["--config", str(uninitialised), "client", "list", "--firm", "X", "--json"])
    assert listed.exit_code == 78 and "cabinet init" in listed.output and listed.stdout == ""


def test_demo_seeds_and_prints_a_working_link(env: Env) -> None:
    run = [sys.executable, "-m", "daemon.cli", "--config", str(env.config_path), "demo"]
    first = subprocess.run(run, capture_output=True, text=True, check=True, env={**os.environ})
    assert "/invitations/" in first.stdout and "accountant@example.com" in first.stdout
    again = subprocess.run(run, capture_output=True, text=True, check=True, env={**os.environ})
    password_line = [line for line in first.stdout.splitlines() if "Password:" in line]
    assert password_line and password_line[0] in again.stdout  # same sign-in, fresh link


def _client_list_statements(cli: Cli, firm: str) -> tuple[int, list[dict[str, object]]]:
    """Run `client list --json` and count the SQL statements every engine executed for it."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        output = cli("client", "list", "--firm", firm, "--json").output
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    return len(statements), json.loads(output)


def test_client_list_statement_count_does_not_grow_with_the_roster(cli: Cli, seed: Seed) -> None:
    def add(start: int, stop: int) -> None:
        for i in range(start, stop):
            products = ["--product", "qbo-plus", "--product", "payroll-core"] if i % 2 == 0 else []
            extra = ["--primary-admin", seed.accountant] if i % 4 == 0 else []
            billing = "wholesale" if products else "none"
            cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", f"Client {i:03d}",
                "--email", f"owner{i}@client{i}.example", "--billing", billing, *products, *extra)

    add(0, 5)
    small, five = _client_list_statements(cli, seed.firm)
    add(5, 50)
    large, fifty = _client_list_statements(cli, seed.firm)
    assert len(five) == 5 and len(fifty) == 50
    assert small == large, (small, large)
    # The streamed rows carry what the lazy loads used to fetch, in roster order.
    assert [c["name"] for c in fifty] == sorted(c["name"] for c in fifty)
    by_name = {c["name"]: c for c in fifty}
    assert by_name["Client 000"]["products"] == ["qbo-plus", "payroll-core"]
    assert by_name["Client 000"]["primary_admin"] == seed.accountant
    assert by_name["Client 001"]["products"] == [] and by_name["Client 001"]["primary_admin"] is None


def test_client_list_of_an_unknown_firm_prints_no_json(cli: Cli, seed: Seed) -> None:
    result = cli("client", "list", "--firm", "Nobody CPA", "--json", expect=3)
    assert not result.output.lstrip().startswith("[")
    assert json.loads(cli("client", "list", "--firm", seed.other_firm, "--json").output) == []


def test_the_invitation_page_reads_in_one_statement(cli: Cli, seed: Seed, env: Env) -> None:
    # The link GET: the invitation with its company, firm, acceptor, invited zone and whether its opening
    # is recorded, in one SELECT (on SQLite without a BEGIN: a lone statement is its own read transaction).
    # Counted where the driver runs them: the read goes to the DBAPI cursor itself (daemon.prepared).
    from sqlalchemy import event

    from daemon.app import build
    from daemon.config import load_config
    from daemon.db import engine_of

    sent = cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output
    token = sent.split("/invitations/")[1].split()[0]
    cabinet = build(load_config(env.config_path))
    statements: list[str] = []

    def trace(dbapi_connection: Any, *_: object) -> None:
        if env.is_sqlite:
            dbapi_connection.set_trace_callback(statements.append)
            return
        import psycopg

        class Traced(psycopg.Cursor):  # type: ignore[type-arg]
            def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                statements.append(str(query))
                return super().execute(query, *args, **kwargs)

        dbapi_connection.cursor_factory = Traced

    engine = engine_of(cabinet.sessions)
    event.listen(engine, "checkout", trace)
    try:
        view = cabinet.roster.open_invitation(token)
    finally:
        event.remove(engine, "checkout", trace)
        engine.dispose()
        cabinet.close()
    statements = [s for s in statements if s.strip() != "SELECT 1"]  # PostgreSQL's pool pre-ping
    assert view.company == seed.company and view.invited_timezone == "UTC"
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1, statements
    assert not [s for s in statements if s.lstrip().upper().startswith("BEGIN")], statements


def test_init_names_a_data_folder_it_cannot_create(tmp_path) -> None:
    """A data folder under a file (or anywhere mkdir fails) is a configuration problem: one line, exit 78,
    naming the path and the key to fix; never a Python traceback."""
    (tmp_path / "taken").write_text("a file, not a folder\n")
    config = tmp_path / "cabinet.toml"
    config.write_text("[storage]\ndata_dir = 'taken/data'\n")
    for command in (["init"], ["demo"]):
        result = CliRunner().invoke(cabinet_cli, ["--config", str(config), *command])
        assert result.exit_code == 78, result.output
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
        assert f"cannot create {tmp_path / 'taken' / 'data'}" in result.output and "[storage] data_dir" in result.output
        assert len(result.output.strip().splitlines()) == 1
