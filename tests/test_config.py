"""Configuration: defaults, file, environment overrides, errors."""

from __future__ import annotations

from pathlib import Path

import tomllib

import pytest

from daemon.config import DEFAULT, SCHEMA, Setting, load_config
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


def test_the_example_config_shows_every_key_with_its_true_default(tmp_path: Path, monkeypatch) -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))
    shown = {(section, key): value for section, table in example.items() for key, value in table.items()}
    declared = {(section, key): spec.default for section, keys in SCHEMA.items() for key, spec in keys.items()}
    assert shown.keys() - declared.keys() == set(), "the example shows keys Cabinet does not know"
    assert declared.keys() - shown.keys() == set(), "keys missing from config.example.toml"
    wrong = {name: (shown[name], declared[name]) for name in declared if shown[name] != declared[name]}
    assert wrong == {}, "example value differs from the default (example, default)"
    # ...and loading it gives exactly what no file at all gives.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.example.toml").write_text((ROOT / "config.example.toml").read_text())
    from_example = load_config(tmp_path / "config.example.toml", env={})
    defaults = load_config(None, env={})
    for section in SCHEMA:
        assert getattr(from_example, section) == getattr(defaults, section)
    assert from_example.mail.from_address == "Cabinet <cabinet@localhost>"


def test_an_empty_from_means_the_default_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\ndomain = "Cabinet.Tremblay.example"\n[mail]\nfrom = ""\n')
    assert load_config(path, env={}).mail.from_address == "Cabinet <cabinet@cabinet.tremblay.example>"
    path.write_text('[mail]\nfrom = "Cabinet"\n')
    with pytest.raises(ConfigError, match=r"\[mail\] from must be an address"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[htttp]\nlisten = "127.0.0.1:9000"\n', r"unknown section \[htttp\]; did you mean \[http\]\?"),
        ("[http]\nbogus = 1\n", r"unknown key \[http\] bogus$"),
        ('[http]\nlisen = "127.0.0.1:9000"\n', r"unknown key \[http\] lisen; did you mean listen\?"),
        ('[mail]\nfrm = ""\n', r"unknown key \[mail\] frm; did you mean from\?"),
        ('[http]\ndomain = "x.example"\n', r"unknown key \[http\] domain; did you mean \[smtp\] domain\?"),
        ("ttl_days = 3\n", r"unknown key ttl_days outside any section; did you mean \[invitations\] ttl_days\?"),
        ("[http]\nbogus = 1\n[smtpp]\n", r"unknown key \[http\] bogus; unknown section \[smtpp\]; did you mean"),
    ],
)
def test_unknown_sections_and_keys_are_refused_with_a_suggestion(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path, env={})
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_mistyped_environment_variable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CABINET_HTTP_PUBLICURL; did you mean CABINET_HTTP_PUBLIC_URL"):
        load_config(None, env={"CABINET_HTTP_PUBLICURL": "https://x.example"})
    with pytest.raises(ConfigError, match="CABINET_MAIL_TRANSPORTS; did you mean CABINET_MAIL_TRANSPORT"):
        load_config(None, env={"CABINET_MAIL_TRANSPORTS": "smtp"})


def test_other_cabinet_variables_are_only_warned_about(tmp_path: Path) -> None:
    # Another section name: probably another tool's variable (tests, scripts), so a warning, not a refusal.
    config = load_config(None, env={"CABINET_HTTTP_LISTEN": "x", "CABINET_CHROMIUM": "/usr/bin/x", "CABINET_CONFIG": ""})
    assert config.warnings == (
        "environment variable CABINET_CHROMIUM is not a configuration key",
        "environment variable CABINET_HTTTP_LISTEN is not a configuration key; did you mean CABINET_HTTP_LISTEN?",
    )
    assert config.http.listen == "127.0.0.1:8080"


def test_every_key_says_where_its_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http]\nlisten = "127.0.0.1:9000"\n[invitations]\nttl_days = 9\n')
    config = load_config(path, env={"CABINET_INVITATIONS_TTL_DAYS": "7"})
    assert config.settings.keys() == {(s, k) for s in SCHEMA for k in SCHEMA[s]}
    assert config.origin("http", "listen") == str(path)
    assert config.origin("invitations", "ttl_days") == "CABINET_INVITATIONS_TTL_DAYS"
    assert config.value("invitations", "ttl_days") == 7
    assert config.origin("smtp", "listen") == DEFAULT
    assert config.value("http", "public_url") == "http://127.0.0.1:9000"  # derived, shown as in force


def test_secrets_are_masked_when_shown(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[storage]\ndatabase_url = "postgresql+psycopg://cabinet:db-pass@db.example/cabinet"\n')
    config = load_config(path, env={"CABINET_MAIL_RELAY_PASSWORD": "relay-pass"})
    shown = {name: setting.shown() for name, setting in config.settings.items()}
    assert shown[("mail", "relay_password")] == "********"
    assert shown[("storage", "database_url")] == "postgresql+psycopg://cabinet:********@db.example/cabinet"
    assert "relay-pass" not in repr(shown) and "db-pass" not in repr(shown)
    assert Setting("", DEFAULT, secret=True).shown() == ""  # an unset secret shows as unset


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
        ('[http]\nlisten = "127.0.0.1:80800"\n', "HOST:PORT"),
        ('[smtp]\nlisten = 25\n', "must be a string"),
        ("[http]\nlisten = true\n", "must be a string"),
        ("[inbound]\ndkim_verify = 2\n", "true or false"),
        ("[inbound]\nfirm_addresses = 3\n", "list of strings"),
        ("http = 3\n", r"\[http\] must be a table"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_a_secret_setting_hides_itself_even_when_printed(tmp_path: Path) -> None:
    config = load_config(None, env={"CABINET_MAIL_RELAY_PASSWORD": "relay-pass"})
    assert config.mail.relay.password.reveal() == "relay-pass"
    assert "relay-pass" not in repr(config.settings[("mail", "relay_password")])
