"""The `cabinet` command line: thin commands over the roster domain.

Each command reads its arguments, calls one domain method and prints the
result (``--json`` on list commands prints a JSON array for scripts). Domain
errors become a one-line message on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from daemon.cli.state import CliState
from daemon.errors import AlreadyExists, CabinetError, ConfigError, NotFound
from daemon.faults import EX_TEMPFAIL, storage_fault

# Exit codes, documented in README.md.
EXIT_CODES: list[tuple[type[CabinetError], int]] = [(ConfigError, 78), (NotFound, 3), (AlreadyExists, 4)]


class DomainError(click.ClickException):
    """A domain error, shown as one line on stderr with its documented exit code."""

    def __init__(self, error: CabinetError) -> None:
        # English, with the code the pages translate, so an operator and a user can name the same error.
        super().__init__(str(error) if error.code == "error.unexpected" else f"{error} [{error.code}]")
        code = next((code for kind, code in EXIT_CODES if isinstance(error, kind)), 1)
        # click declares exit_code a ClassVar, but reads it from the instance: the code is per error here.
        self.exit_code = code  # type: ignore[misc]


class StorageFault(click.ClickException):
    """The database or the disk is unavailable: one line, exit 75 (EX_TEMPFAIL), try again later."""

    exit_code = EX_TEMPFAIL

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; nothing was changed, try again when it is back")


# Each top-level command and the modules (daemon.cli.*) whose ``register`` adds it. A command's
# modules are imported when it runs (or for --help), so `cabinet client list` does not load the web
# server, the mail templates or the ORM it does not use; tests/test_cli_startup.py keeps this complete.
COMMANDS: dict[str, tuple[str, ...]] = {
    "init": ("service",), "serve": ("service",), "demo": ("service",),
    "db": ("database",), "config": ("config",), "firm": ("firms",), "staff": ("staff",),
    "company": ("companies",), "invitation": ("invitations",), "client": ("clients",),
    "transfer": ("transfers",), "product": ("products",), "jobs": ("products",),
    "mail": ("mail", "templates"), "inbound": ("inbound",), "link": ("links",),
}


class CabinetGroup(click.Group):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._registered: set[str] = set()  # modules whose commands this group holds

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.load(COMMANDS[cmd_name])
        return self.commands.get(cmd_name)

    def load(self, modules: tuple[str, ...]) -> None:
        """Import ``modules`` and add their commands, each with ``--config`` after its name too."""
        before = set(self.commands)
        for name in modules:
            if name not in self._registered:
                importlib.import_module(f"daemon.cli.{name}").register(self)
                self._registered.add(name)
        for command_name in set(self.commands) - before:
            add_config_option(self.commands[command_name])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CabinetError as exc:
            raise DomainError(exc) from exc
        except Exception as exc:
            reason = storage_fault(exc)
            if reason is None:
                raise
            raise StorageFault(reason) from None


@click.group(cls=CabinetGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    # $CABINET_CONFIG is read by load_config itself, so a --config after the command wins over it.
    from_command_line = ctx.get_parameter_source("config_path") == click.core.ParameterSource.COMMANDLINE
    state = CliState(config_path if from_command_line else None)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _config_after_command(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        # None only outside `cli`, whose callback stores the CliState before any command's options are parsed.
        ctx.find_object(CliState).use_config(value)  # type: ignore[union-attr]


def add_config_option(command: click.Command) -> None:
    """Give ``command`` and every command under it ``--config`` too: `cabinet firm list --config X`."""
    command.params.append(
        click.Option(
            ["--config"], type=click.Path(dir_okay=False), expose_value=False, callback=_config_after_command,
            help="Config file (TOML), as `cabinet --config PATH …`.",
        )
    )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_config_option(sub)




def main() -> Any:
    return cli(prog_name="cabinet")
