"""The cost of argon2id password hashes is configuration, with RFC 9106's recommended setting by default."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from daemon.app import build
from daemon.cli import cli as cabinet_cli
from daemon.config import load_config
from tests.conftest import PASSWORD, Cli, Env


def test_the_configured_cost_is_the_stored_hashes_cost(env: Env, cli: Cli) -> None:
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("staff", "add", "marie@tremblay.example", "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n")
    [(stored,)] = env.sql("SELECT password_hash FROM users")
    # The suite's config (tests/conftest.py): 1 pass over 8 MiB, still argon2id.
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=4$"), stored


def test_the_default_cost_is_rfc_9106s_and_older_hashes_keep_verifying(env: Env, cli: Cli) -> None:
    plain = env.root / "plain.toml"
    plain.write_text(env.config_path.read_text().replace("password_time_cost = 1\n", "").replace(
        "password_memory_kib = 8192\n", ""), encoding="utf-8")
    config = load_config(plain)
    assert (config.value("security", "password_time_cost"), config.value("security", "password_memory_kib")) == (3, 65536)
    default = build(config)
    cheap = build(load_config(env.config_path))
    try:
        strong = default.passwords.hash(PASSWORD)
        assert strong.startswith("$argon2id$v=19$m=65536,t=3,p=4$"), strong
        # Lowering or raising the cost does not lock anyone out: each hash records its own.
        assert cheap.passwords.verify(strong, PASSWORD)
        assert not cheap.passwords.verify(strong, PASSWORD + "!")
        assert default.passwords.verify(cheap.passwords.hash(PASSWORD), PASSWORD)
    finally:
        default.close()
        cheap.close()


def test_a_cost_below_the_floor_is_refused(tmp_path: Path, env: Env) -> None:
    for key, value in (("password_memory_kib", "1024"), ("password_time_cost", "0")):
        result = CliRunner().invoke(cabinet_cli, ["--config", str(env.config_path), "firm", "list"],
                                    env={f"CABINET_SECURITY_{key.upper()}": value})
        assert result.exit_code == 78, result.output
        assert f"[security] {key} must be at least" in result.output
