"""The `cabinet` command line: thin commands over the roster domain.

Each command reads its arguments, calls one domain method and prints the
result (``--json`` on list commands prints a JSON array for scripts). Domain
errors become a one-line message on stderr and a non-zero exit code.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from daemon.cli import clients, companies, firms, invitations, mail, service, staff
from daemon.cli.state import CliState
from daemon.errors import AlreadyExists, CabinetError, ConfigError, NotFound

# Exit codes, documented in README.md.
EXIT_CODES: list[tuple[type[CabinetError], int]] = [(ConfigError, 78), (NotFound, 3), (AlreadyExists, 4)]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CABINET_CONFIG",
    help="Config file (TOML). Default: $CABINET_CONFIG, else built-in defaults.",
)
@click.version_option(package_name="cabinet")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Cabinet: email-driven client onboarding for accounting firms.

    Start with `cabinet init`, then `cabinet serve`. `cabinet demo` seeds a
    firm, an accountant, a client company and one invitation to try it out.
    """
    state = CliState(config_path)
    ctx.obj = state
    ctx.call_on_close(state.close)


for module in (service, firms, staff, companies, invitations, clients, mail):
    module.register(cli)


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="cabinet", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CabinetError as exc:
        click.echo(f"Error: {exc}", err=True)
        code = next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), 1)
        sys.exit(code)
