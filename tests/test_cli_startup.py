"""Commands that do not serve start without the HTTP/SMTP stacks, migrations or DKIM (start-up time)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import Cli, Env

# What only `cabinet serve` (aiohttp, aiosmtpd), `init`/`db` (alembic) or inbound mail (dkimpy, flufl.bounce) need.
HEAVY = ("aiohttp", "aiosmtpd", "alembic", "dkim", "dns.resolver", "flufl.bounce")

PROBE = """
import json, runpy, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["cabinet", *json.loads(sys.argv[1])]
try:
    runpy.run_module("daemon.cli", run_name="__main__")
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(json.dumps({"exit": code, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def imported_by(env: Env, *args: str) -> dict[str, object]:
    """Run `cabinet ARGS` in a fresh interpreter; its exit code and which of HEAVY it imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(["--config", str(env.config_path), *args]), json.dumps(HEAVY)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_everyday_commands_do_not_import_what_only_serve_needs(env: Env, cli: Cli) -> None:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    # A command imports its own module only (daemon.cli.COMMANDS); this one reads the database too.
    assert imported_by(env, "client", "list", "--firm", "Tremblay CPA", "--json") == {"exit": 0, "loaded": []}
    # One that builds the whole Cabinet.
    assert imported_by(env, "firm", "list") == {"exit": 0, "loaded": []}


def test_the_probe_sees_what_a_command_imports(env: Env, cli: Cli) -> None:
    # `cabinet init` migrates, so it imports Alembic: the probe above would notice a heavy import.
    assert "alembic" in imported_by(env, "init")["loaded"]  # type: ignore[operator]


# What `client list --json` reads without: the whole Cabinet, the ORM (models and library), the domain, mail and web.
NOT_FOR_THE_LIST = ("daemon.app", "daemon.models", "daemon.domain", "daemon.roster", "sqlalchemy.orm", "jinja2",
                    "babel", "argon2", "email_validator", "mailer.outbox")


def test_client_list_json_imports_only_the_database_read(env: Env, cli: Cli) -> None:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(["--config", str(env.config_path), "client", "list", "--firm",
                                                  "Tremblay CPA", "--json"]), json.dumps(NOT_FOR_THE_LIST)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"exit": 0, "loaded": []}
    assert done.stdout.startswith("[]")


def test_every_command_is_listed_where_it_is_imported_from() -> None:
    """daemon.cli imports a command's module only when the command runs: its map must name every
    command each module registers, and only those."""
    import importlib
    import pkgutil

    import click

    import daemon.cli
    from daemon.cli import COMMANDS

    registered: dict[str, set[str]] = {}
    for module in pkgutil.iter_modules(daemon.cli.__path__):
        if module.name.startswith("_"):  # __main__ runs the command line
            continue
        imported = importlib.import_module(f"daemon.cli.{module.name}")
        if hasattr(imported, "register"):
            group = click.Group()
            imported.register(group)
            for name in group.commands:
                registered.setdefault(name, set()).add(module.name)
    # templates adds its commands to the `mail` group, so `mail` needs both modules.
    registered.setdefault("mail", set()).add("templates")
    assert registered == {name: set(modules) for name, modules in COMMANDS.items()}


def test_client_list_tables_match_the_models() -> None:
    """daemon.client_list reads through stubs of the tables (no ORM import): each column it names
    must exist in daemon.models."""
    from daemon import client_list
    from daemon.models import Base

    for stub in (client_list.firms, client_list.clients, client_list.companies, client_list.users,
                 client_list.company_products, client_list.products):
        model = Base.metadata.tables[stub.name]
        assert {c.name for c in stub.columns} <= {c.name for c in model.columns}, stub.name
