"""Configuration: defaults, file, environment overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.storage.data_dir == tmp_path / "cabinet-data"
    assert config.database_url == f"sqlite:///{tmp_path / 'cabinet-data' / 'cabinet.sqlite3'}"
    assert config.http.listen == "127.0.0.1:8080" and config.http.public_url == "http://127.0.0.1:8080"
    assert config.smtp.listen == "127.0.0.1:8025"
    assert config.mail.transport == "maildir" and config.mail.maildir == tmp_path / "cabinet-data" / "maildir"
    assert config.invitations.ttl_days == 30


def test_the_example_config_is_complete_and_matches_the_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    example = load_config(ROOT / "config.example.toml", env={})
    defaults = load_config(None, env={})
    assert example.http == defaults.http and example.smtp == defaults.smtp
    assert example.invitations == defaults.invitations and example.general == defaults.general
    assert example.mail.transport == defaults.mail.transport
    assert example.mail.relay.port == defaults.mail.relay.port


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http]\nlisten = "127.0.0.1:9000"\npublic_url = "https://links.example/"\n')
    config = load_config(path, env={"CABINET_HTTP_LISTEN": "127.0.0.1:9100", "CABINET_INVITATIONS_TTL_DAYS": "7"})
    assert config.http.listen == "127.0.0.1:9100"
    assert config.http.public_url == "https://links.example"
    assert config.invitations.ttl_days == 7


def test_relay_password_from_a_file_never_prints(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[mail]\nrelay_password_file = "{secret}"\n')
    config = load_config(path, env={})
    assert config.mail.relay.password.reveal() == "s3cret-value"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[mail]\ntransport = "pigeon"\n', "must be one of"),
        ("[invitations]\nttl_days = 0\n", "at least 1"),
        ('[invitations]\nttl_days = "soon"\n', "whole number"),
        ('[http]\npublic_url = "ftp://x"\n', "http:// or https://"),
        ("[http\n", "not valid TOML"),
        ('[general]\ndefault_locale = "de"\n', "must be one of"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})
