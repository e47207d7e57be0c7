"""`cabinet mail preview` and `cabinet mail templates`: any email as it would be sent, with
sample facts, and which file (built-in or the operator's override) each part comes from.

Neither needs the database: they read the configuration and the templates only.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click
from jinja2 import TemplateError, TemplateNotFound, TemplateSyntaxError

from daemon.cli.mail import mail
from daemon.cli.state import CliState, pass_state, print_table
from daemon.config import LOCALES
from daemon.template_folders import TemplateFolders, template_folders
from mailer.render import EMAIL_LAYOUTS, EMAIL_PARTS, EmailRenderer, email_names
from mailer.samples import SAMPLE_NOW, sample_context


def _folders(state: CliState) -> TemplateFolders:
    return template_folders(state.config.templates.dir)


def _names(folders: TemplateFolders) -> list[str]:
    return email_names(folders.builtin / "email" / LOCALES[0])


def _template_error(exc: TemplateError) -> click.ClickException:
    """One line naming the file and line, never a traceback."""
    if isinstance(exc, TemplateSyntaxError):
        return click.ClickException(f"{exc.filename or exc.name} line {exc.lineno}: {exc.message}")
    if isinstance(exc, TemplateNotFound):
        return click.ClickException(f"template file not found: {exc.name}")
    return click.ClickException(f"{exc.message} (a fact the sample lacks? give it with --context)")


@mail.command("preview")
@click.argument("template")
@click.option("--locale", type=click.Choice(LOCALES), help="The reader's language. Default: [general] default_locale.")
@click.option("--html", "part", flag_value="html", help="Print the HTML part only.")
@click.option("--text", "part", flag_value="text", help="Print the text part only.")
@click.option("--context", "context_json", metavar="JSON",
              help='Facts replacing the sample ones, as a JSON object, e.g. \'{"company": "Acme"}\'.')
@click.option("--open", "open_file", is_flag=True, help="Write the HTML part to a file and print its path.")
@pass_state
def preview(state: CliState, template: str, locale: str | None, part: str | None, context_json: str | None,
            open_file: bool) -> None:
    """Render email TEMPLATE with sample facts, as it would be sent (override folder included).

    Without --html or --text: the subject and the text part.

    Example: cabinet mail preview invitation --locale fr --context '{"company": "Acme"}'
    """
    folders = _folders(state)
    names = _names(folders)
    if template not in names:
        close = difflib.get_close_matches(template, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise click.BadParameter(f"no email named {template!r}.{hint} `cabinet mail templates` lists them.",
                                 param_hint="TEMPLATE")
    overrides: Any = {}
    if context_json:
        try:
            overrides = json.loads(context_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--context") from None
        if not isinstance(overrides, dict):
            raise click.BadParameter("must be a JSON object, like '{\"company\": \"Acme\"}'", param_hint="--context")
    locale = locale or state.config.general.default_locale
    try:
        rendered = EmailRenderer(folders.search_path("email")).render(
            template, locale, state.config.general.timezone, {"now": SAMPLE_NOW, **sample_context(template, overrides)}
        )
    except TemplateError as exc:
        raise _template_error(exc) from None
    if open_file:
        fd, name = tempfile.mkstemp(prefix=f"cabinet-{template}-{locale}-", suffix=".html")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(rendered.html)
        click.echo(name)
    elif part == "html":
        click.echo(rendered.html, nl=False)
    elif part == "text":
        click.echo(rendered.text, nl=False)
    else:
        click.echo(f"Subject: {rendered.subject}\n")
        click.echo(rendered.text, nl=False)


def _source(folders: TemplateFolders, relative: str) -> tuple[str, Path | None]:
    found = folders.find(relative)
    if found is None:
        return "missing", None
    if folders.override is not None and found.is_relative_to(folders.override):
        return "override", found
    return "built-in", found


@mail.command("templates")
@click.option("--overridden", is_flag=True, help="Only the files the override folder replaces or adds.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def templates(state: CliState, overridden: bool, as_json: bool) -> None:
    """List every email template file and which one wins: built-in, or the override
    folder's ([templates] dir). Override files no email uses are listed as unused."""
    folders = _folders(state)
    rows: list[dict[str, str]] = []
    known = {f"email/{layout}": "(layout)" for layout in EMAIL_LAYOUTS}
    for name in _names(folders):
        for locale in LOCALES:
            for part in EMAIL_PARTS:
                known[f"email/{locale}/{name}.{part}"] = name
    for relative, name in known.items():
        source, path = _source(folders, relative)
        rows.append({"template": name, "file": relative, "source": source, "path": str(path or "")})
    if folders.override is not None:
        # A misspelt override file would otherwise be silently ignored.
        for path in sorted((folders.override / "email").rglob("*")):
            relative = path.relative_to(folders.override).as_posix()
            if path.is_file() and relative not in known:
                rows.append({"template": "", "file": relative, "source": "unused", "path": str(path)})
    if overridden:
        rows = [row for row in rows if row["source"] != "built-in"]
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    click.echo(f"Override folder: {folders.override}" if folders.override else
               "No override folder ([templates] dir is empty): every file is built-in.")
    print_table([[r["template"], r["file"], r["path"] if r["source"] == "override" else r["source"]] for r in rows],
                ["TEMPLATE", "FILE", "FROM"])


def register(cli: click.Group) -> None:
    """Adds the commands to the `mail` group (so `daemon.cli.mail` need not know them)."""
    mail.add_command(preview)
    mail.add_command(templates)
