"""Configuration: TOML file, environment overrides, defaults.

Every key documented in ``config.example.toml`` is read here and nowhere else.
Any key can be overridden by an environment variable named
``CABINET_<SECTION>_<KEY>`` (e.g. ``CABINET_HTTP_LISTEN``), which is how
container and systemd deployments usually pass settings.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from daemon.errors import ConfigError

CONFIG_ENV = "CABINET_CONFIG"
LOCALES = ("en", "fr")


class Secret:
    """A value that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path
    database_url: str


@dataclass(frozen=True)
class HttpConfig:
    listen: str
    public_url: str


@dataclass(frozen=True)
class SmtpConfig:
    listen: str
    domain: str


@dataclass(frozen=True)
class RelayConfig:
    host: str
    port: int
    tls: str  # "starttls" | "tls" | "none"
    user: str
    password: Secret = field(repr=False)


@dataclass(frozen=True)
class MailConfig:
    from_address: str
    transport: str  # "maildir" | "smtp"
    maildir: Path
    relay: RelayConfig
    poll_interval: float
    max_attempts: int
    claim_lease: float


@dataclass(frozen=True)
class SecurityConfig:
    secret_keys_file: Path
    session_hours: int


@dataclass(frozen=True)
class InvitationsConfig:
    ttl_days: int


@dataclass(frozen=True)
class InboundConfig:
    protocol: str  # "smtp" | "lmtp"
    max_message_size: int
    max_recipients: int
    max_line_length: int
    timeout: float
    max_connections: int
    max_attempts: int
    trusted_authserv_ids: tuple[str, ...]
    dkim_verify: bool
    firm_addresses: tuple[str, ...]


@dataclass(frozen=True)
class SchedulerConfig:
    interval: float


@dataclass(frozen=True)
class RetentionConfig:
    inbound_days: int  # 0: keep forever
    outbox_days: int


@dataclass(frozen=True)
class GeneralConfig:
    default_locale: str
    timezone: str
    log_level: str


@dataclass(frozen=True)
class Config:
    general: GeneralConfig
    storage: StorageConfig
    http: HttpConfig
    smtp: SmtpConfig
    mail: MailConfig
    security: SecurityConfig
    invitations: InvitationsConfig
    scheduler: SchedulerConfig
    inbound: InboundConfig
    source: Path | None  # the file it was read from, if any
    retention: RetentionConfig = RetentionConfig(inbound_days=180, outbox_days=180)

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{self.storage.data_dir / 'cabinet.sqlite3'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _split_listen(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{key} must look like HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def listen_address(value: str, key: str = "listen") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:8080`` for IPv6)."""
    return _split_listen(value, key)


class _Reader:
    """Reads typed values from the TOML tree, letting the environment override."""

    def __init__(self, tree: Mapping[str, Any], env: Mapping[str, str], base: Path) -> None:
        self._tree = tree
        self._env = env
        self._base = base

    def _raw(self, section: str, key: str, default: Any) -> Any:
        env_key = f"CABINET_{section}_{key}".upper()
        if env_key in self._env:
            return self._env[env_key]
        table = self._tree.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        return table.get(key, default)

    def text(self, section: str, key: str, default: str) -> str:
        value = self._raw(section, key, default)
        if not isinstance(value, str):
            raise ConfigError(f"[{section}] {key} must be a string, got {value!r}")
        return value

    def integer(self, section: str, key: str, default: int, minimum: int = 0) -> int:
        value = self._raw(section, key, default)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"[{section}] {key} must be a whole number, got {value!r}") from None
        if number < minimum:
            raise ConfigError(f"[{section}] {key} must be at least {minimum}, got {number}")
        return number

    def number(self, section: str, key: str, default: float) -> float:
        value = self._raw(section, key, default)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"[{section}] {key} must be a number, got {value!r}") from None

    def flag(self, section: str, key: str, default: bool) -> bool:
        value = self._raw(section, key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"[{section}] {key} must be true or false, got {value!r}")

    def strings(self, section: str, key: str) -> tuple[str, ...]:
        value = self._raw(section, key, [])
        if isinstance(value, str):  # from the environment: comma-separated
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[{section}] {key} must be a list of strings, got {value!r}")
        return tuple(value)

    def choice(self, section: str, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(section, key, default)
        if value not in choices:
            raise ConfigError(f"[{section}] {key} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def path(self, section: str, key: str, default: Path) -> Path:
        value = self.text(section, key, "")
        if not value:
            return default
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._base / path)


def load_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from ``path`` (or ``$CABINET_CONFIG``) and the environment.

    With no file at all, everything takes its embedded default: SQLite and a
    Maildir under ``./cabinet-data``, HTTP and SMTP on loopback.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    tree: dict[str, Any] = {}
    source: Path | None = None
    if path is not None:
        source = Path(path).expanduser().resolve()
        try:
            tree = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {source}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
    base = source.parent if source else Path.cwd()
    r = _Reader(tree, env, base)

    data_dir = r.path("storage", "data_dir", base / "cabinet-data")
    storage = StorageConfig(data_dir=data_dir, database_url=r.text("storage", "database_url", ""))

    http_listen = r.text("http", "listen", "127.0.0.1:8080")
    host, port = _split_listen(http_listen, "[http] listen")
    public_url = r.text("http", "public_url", "") or f"http://{host}:{port}"
    if not public_url.startswith(("http://", "https://")):
        raise ConfigError(f"[http] public_url must start with http:// or https://, got {public_url!r}")
    http = HttpConfig(listen=http_listen, public_url=public_url.rstrip("/"))

    smtp_listen = r.text("smtp", "listen", "127.0.0.1:8025")
    _split_listen(smtp_listen, "[smtp] listen")
    domain = r.text("smtp", "domain", "localhost").lower()
    smtp = SmtpConfig(listen=smtp_listen, domain=domain)

    password = r.text("mail", "relay_password", "")
    password_file = r.path("mail", "relay_password_file", Path())
    if not password and password_file != Path():
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"[mail] relay_password_file cannot be read: {exc}") from None
    relay = RelayConfig(
        host=r.text("mail", "relay_host", "localhost"),
        port=r.integer("mail", "relay_port", 25, minimum=1),
        tls=r.choice("mail", "relay_tls", "starttls", ("starttls", "tls", "none")),
        user=r.text("mail", "relay_user", ""),
        password=Secret(password),
    )
    mail = MailConfig(
        from_address=r.text("mail", "from", f"Cabinet <cabinet@{domain}>"),
        transport=r.choice("mail", "transport", "maildir", ("maildir", "smtp")),
        maildir=r.path("mail", "maildir", data_dir / "maildir"),
        relay=relay,
        poll_interval=r.number("mail", "poll_interval", 2.0),
        max_attempts=r.integer("mail", "max_attempts", 8, minimum=1),
        claim_lease=r.number("mail", "claim_lease", 120.0),
    )
    security = SecurityConfig(
        secret_keys_file=r.path("security", "secret_keys_file", data_dir / "secret_keys"),
        session_hours=r.integer("security", "session_hours", 12, minimum=1),
    )
    invitations = InvitationsConfig(ttl_days=r.integer("invitations", "ttl_days", 30, minimum=1))
    scheduler = SchedulerConfig(interval=r.number("scheduler", "interval", 60.0))
    inbound = InboundConfig(
        protocol=r.choice("inbound", "protocol", "smtp", ("smtp", "lmtp")),
        max_message_size=r.integer("inbound", "max_message_size", 10 * 1024 * 1024, minimum=1024),
        max_recipients=r.integer("inbound", "max_recipients", 20, minimum=1),
        max_line_length=r.integer("inbound", "max_line_length", 1001, minimum=80),
        timeout=r.number("inbound", "timeout", 300.0),
        max_connections=r.integer("inbound", "max_connections", 100, minimum=1),
        max_attempts=r.integer("inbound", "max_attempts", 5, minimum=1),
        trusted_authserv_ids=tuple(v.lower() for v in r.strings("inbound", "trusted_authserv_ids")),
        dkim_verify=r.flag("inbound", "dkim_verify", False),
        firm_addresses=tuple(v.lower() for v in r.strings("inbound", "firm_addresses")),
    )
    general = GeneralConfig(
        default_locale=r.choice("general", "default_locale", "en", LOCALES),
        timezone=r.text("general", "timezone", "UTC"),
        log_level=r.choice("general", "log_level", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    return Config(
        general=general,
        storage=storage,
        http=http,
        smtp=smtp,
        mail=mail,
        security=security,
        invitations=invitations,
        scheduler=scheduler,
        inbound=inbound,
        source=source,
        retention=RetentionConfig(
            inbound_days=r.integer("retention", "inbound_days", 180), outbox_days=r.integer("retention", "outbox_days", 180)
        ),
    )
