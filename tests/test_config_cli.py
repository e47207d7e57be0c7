"""`--config` anywhere on the command line, and `cabinet config check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from daemon.cli import cli as cabinet_cli
from tests.conftest import Env


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cabinet_cli, list(args), env=env)


def explain(result: Result) -> str:
    return f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{result.exception!r}"


def test_config_works_before_or_after_the_command(env: Env) -> None:
    config = str(env.config_path)
    assert (result := run("init", "--config", config)).exit_code == 0, explain(result)
    assert (result := run("--config", config, "firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")).exit_code == 0, explain(result)
    before = run("--config", config, "firm", "list", "--json")
    after = run("firm", "list", "--json", "--config", config)
    assert before.exit_code == 0 and after.exit_code == 0, explain(after)
    assert [f["name"] for f in json.loads(after.stdout)] == ["Tremblay CPA"] == [f["name"] for f in json.loads(before.stdout)]
    # Deeper commands too, with the option among the command's own.
    sent = run("company", "add", "Boulangerie Roy", "--config", config, "--admin-email", "julie@roy.example",
               "--admin-name", "Julie Roy")
    assert sent.exit_code == 0, explain(sent)


def test_config_given_twice_with_different_files_is_bad_usage(env: Env, tmp_path: Path) -> None:
    result = run("--config", str(env.config_path), "firm", "list", "--config", str(tmp_path / "other.toml"))
    assert result.exit_code == 2 and "--config given twice" in result.stderr, explain(result)


def test_config_after_the_command_wins_over_the_environment(env: Env, tmp_path: Path) -> None:
    assert run("init", "--config", str(env.config_path)).exit_code == 0
    result = run("firm", "list", "--config", str(env.config_path), env={"CABINET_CONFIG": str(tmp_path / "missing.toml")})
    assert result.exit_code == 0, explain(result)


def test_check_prints_every_value_with_its_origin_and_masks_secrets(env: Env) -> None:
    # Into the [security] table the test config already has (a second [security] is a TOML error).
    env.config_path.write_text(env.config_path.read_text().replace("[security]\n", "[security]\nsession_hours = 8\n", 1))
    environment = {"CABINET_MAIL_RELAY_PASSWORD": "relay-pass-123", "CABINET_INVITATIONS_TTL_DAYS": "7"}
    result = run("config", "check", "--config", str(env.config_path), env=environment)
    assert result.exit_code == 0, explain(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"# Cabinet configuration from {env.config_path}"

    def line(key: str) -> str:
        return next(text for text in lines if text.startswith(f"{key} = "))

    assert line("session_hours").split("#")[1].strip() == str(env.config_path)
    assert line("ttl_days").startswith("ttl_days = 7") and line("ttl_days").endswith("# CABINET_INVITATIONS_TTL_DAYS")
    assert line("relay_password").startswith('relay_password = "********"')
    assert line("timezone").endswith("# default")
    assert "relay-pass-123" not in result.output

    as_json = run("config", "check", "--json", "--config", str(env.config_path), env=environment)
    assert as_json.exit_code == 0, explain(as_json)
    document = json.loads(as_json.stdout)
    assert document["source"] == str(env.config_path)
    assert document["settings"]["invitations"]["ttl_days"] == {"value": 7, "origin": "CABINET_INVITATIONS_TTL_DAYS"}
    assert document["settings"]["mail"]["relay_password"]["value"] == "********"
    assert document["settings"]["security"]["session_hours"] == {"value": 8, "origin": str(env.config_path)}
    assert "relay-pass-123" not in as_json.output


@pytest.mark.parametrize(
    ("extra", "environment", "message"),
    [
        ("\n[htttp]\nlisten = \"127.0.0.1:1\"\n", {}, "unknown section [htttp]; did you mean [http]?"),
        ("\n[invitations]\nttl_dayz = 3\n", {}, "unknown key [invitations] ttl_dayz; did you mean ttl_days?"),
        ("", {"CABINET_SMTP_DOMIAN": "x.example"}, "unknown environment variable CABINET_SMTP_DOMIAN; did you mean CABINET_SMTP_DOMAIN?"),
    ],
)
def test_check_refuses_an_invalid_configuration_in_one_line(
    env: Env, extra: str, environment: dict[str, str], message: str
) -> None:
    with env.config_path.open("a") as config:
        config.write(extra)
    result = run("config", "check", "--config", str(env.config_path), env=environment)
    assert result.exit_code == 78, explain(result)
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, explain(result)
    assert message in result.stderr, explain(result)
    # Every other command refuses the same configuration the same way.
    other = run("firm", "list", "--config", str(env.config_path), env=environment)
    assert other.exit_code == 78 and message in other.stderr, explain(other)
