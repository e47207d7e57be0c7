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
    # Every command module is imported whatever the command; this one also builds Cabinet and reads.
    assert imported_by(env, "client", "list", "--firm", "Tremblay CPA", "--json") == {"exit": 0, "loaded": []}


def test_the_probe_sees_what_a_command_imports(env: Env, cli: Cli) -> None:
    # `cabinet init` migrates, so it imports Alembic: the probe above would notice a heavy import.
    assert "alembic" in imported_by(env, "init")["loaded"]  # type: ignore[operator]
