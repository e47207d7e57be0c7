"""Configuration: TOML file, environment overrides, defaults — all declared once in ``SCHEMA``.

Every key Cabinet reads is a line of ``SCHEMA`` below and is read through it:
the file's unknown sections and keys are refused (with a "did you mean"), the
environment variable of every key is ``CABINET_<SECTION>_<KEY>`` (e.g.
``CABINET_HTTP_LISTEN``, which is how container and systemd deployments
usually pass settings), ``cabinet config check`` lists them all with where
each value came from, and a test holds ``config.example.toml`` to the same
defaults.
"""

from __future__ import annotations

import difflib
import hmac
import os
import re
import tomllib
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Mapping

from daemon.errors import ConfigError

CONFIG_ENV = "CABINET_CONFIG"
ENV_PREFIX = "CABINET_"
LOCALES = ("en", "fr")
DEFAULT = "default"  # the origin of a value nobody set


class Secret:
    """A value that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)  # equal secrets must hash alike; the value itself stays out of it

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class Key:
    """One configuration key: its default (as written in the file), its kind, and a line of doc.

    kinds: text, integer (with ``minimum``), number, flag, strings (a list), choice (of
    ``choices``), path (relative to the config file's folder), listen (HOST:PORT).
    An empty text or path default means "derived from other keys" (the doc says how).
    """

    default: Any
    kind: str = "text"
    doc: str = ""
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: int = 0


# The one declaration of every key. To add a key, add one line here (a new section is a
# new dict) and show it with its default in config.example.toml (tests/test_config.py
# checks the example against this table). Its value is then checked, overridable from
# the environment, listed by `cabinet config check` and readable as
# ``config.value(section, key)``; give it a field in its section's dataclass (read in
# ``load_config``) only if it needs deriving or checking across keys.
SCHEMA: dict[str, dict[str, Key]] = {
    "general": {
        "default_locale": Key("en", "choice", "language when nothing better is known", choices=LOCALES),
        "timezone": Key("UTC", doc="time zone for people whose own is not recorded"),
        "log_level": Key("INFO", "choice", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        "product_name": Key("Cabinet", doc="the name pages and emails show (the From: name's \"via …\")"),
    },
    "storage": {
        "data_dir": Key("cabinet-data", "path", "database, signing keys and Maildir"),
        "database_url": Key("", doc="empty: SQLite in data_dir"),
    },
    "http": {
        "listen": Key("127.0.0.1:8080", "listen", "where the link handler listens"),
        "public_url": Key("", doc="base of emailed links; empty: http://<listen>; recorded by `cabinet init`"),
        "trusted_proxies": Key([], "strings", "reverse proxies whose X-Forwarded-For is believed"),
    },
    "smtp": {
        "listen": Key("127.0.0.1:8025", "listen", "where the inbound SMTP/LMTP listener listens"),
        "domain": Key("localhost", doc="Cabinet's own mail domain"),
    },
    "mail": {
        "from": Key("", doc='From: of every email; empty: "Cabinet <cabinet@<domain>>"'),
        "transport": Key("maildir", "choice", "maildir or smtp", choices=("maildir", "smtp")),
        "maildir": Key("", "path", "empty: data_dir/maildir"),
        "relay_host": Key("localhost", doc="SMTP relay host"),
        "relay_port": Key(25, "integer", "SMTP relay port", minimum=1),
        "relay_tls": Key("starttls", "choice", "relay TLS", choices=("starttls", "tls", "none")),
        "relay_user": Key("", doc="relay user name"),
        "relay_password": Key("", doc="relay password (prefer relay_password_file)", secret=True),
        "relay_password_file": Key("", "path", "file holding the relay password"),
        "poll_interval": Key(2.0, "number", "seconds between outbox passes"),
        "give_up_after": Key(432000.0, "number", "seconds an email is retried (4xx, relay down) before it is failed"),
        "relay_timeout": Key(30.0, "number", "seconds for one whole conversation with the relay"),
        "relay_connections": Key(2, "integer", "relay connections kept open; emails sent at once", minimum=1),
        "claim_lease": Key(120.0, "number", "seconds an instance holds the emails it sends"),
    },
    "security": {
        "secret_keys_file": Key("", "path", "signing keys; empty: data_dir/secret_keys"),
        "session_hours": Key(12, "integer", "how long a staff sign-in lasts", minimum=1),
        # argon2id's cost per password hash (RFC 9106's second recommended setting by default).
        "password_time_cost": Key(3, "integer", "argon2id passes over memory per password hash", minimum=1),
        "password_memory_kib": Key(65536, "integer", "argon2id memory per password hash, in KiB", minimum=8192),
    },
    "invitations": {
        "ttl_days": Key(30, "integer", "how long an invitation link stays valid", minimum=1),
    },
    "scheduler": {
        "interval": Key(60.0, "number", "seconds between deadline-job runs"),
    },
    "inbound": {
        "protocol": Key("smtp", "choice", "smtp or lmtp", choices=("smtp", "lmtp")),
        "max_message_size": Key(10485760, "integer", "bigger messages are refused", minimum=1024),
        "max_recipients": Key(20, "integer", "recipients per transaction", minimum=1),
        "max_line_length": Key(1001, "integer", "longest SMTP line", minimum=80),
        "timeout": Key(300.0, "number", "idle seconds per connection"),
        "max_connections": Key(100, "integer", "connections at once", minimum=1),
        "max_connections_per_ip": Key(20, "integer", "connections at once from one client address", minimum=1),
        "max_idle_commands": Key(10, "integer", "commands without a message before 421", minimum=1),
        "max_attempts": Key(5, "integer", "processing attempts before quarantine", minimum=1),
        "trusted_authserv_ids": Key([], "strings", "MTAs whose Authentication-Results are believed"),
        "dkim_verify": Key(False, "flag", "verify DKIM in Cabinet itself"),
        "firm_addresses": Key([], "strings", "extra inbox addresses accepted"),
    },
    "retention": {
        "inbound_days": Key(180, "integer", "days stored inbound mail is kept (0: forever)"),
        "outbox_days": Key(180, "integer", "days sent or failed emails are kept (0: forever)"),
    },
    "templates": {
        "dir": Key("", "path", "folder whose files replace the built-in templates, file by file"),
    },
    "metrics": {
        "listen": Key("127.0.0.1:9108", "text", "where /metrics is served (its own listener); empty: nowhere"),
    },
    "limits": {
        "manage_invitations_per_day": Key(5, "integer", "invitations per company per day from a manage link", minimum=1),
        "sign_in_failures_per_address": Key(10, "integer", "failures in the window before an address is locked",
                                            minimum=1),
        "sign_in_failures_per_ip": Key(50, "integer", "failures in the window before a client IP is locked",
                                       minimum=1),
        "sign_in_window_minutes": Key(15, "integer", "the sign-in failure window", minimum=1),
        "unproven_reply_answer_minutes": Key(60, "integer", "an unproven reply command is answered at most once per "
                                             "invitation in this many minutes", minimum=1),
    },
}


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


@dataclass(frozen=True)
class Setting:
    """A key's effective value and where it came from: "default", the file's path, or an env var's name."""

    value: Any
    origin: str
    secret: bool = False

    def shown(self) -> Any:
        """The value as ``cabinet config check`` prints it (JSON-able), secrets masked."""
        value = self.value
        if value is None:  # an empty path: its derived default applies
            return ""
        if isinstance(value, Secret):
            value = value.reveal()
        if self.secret:
            return "********" if value else ""
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, str):
            return _URL_PASSWORD.sub(r"\1********@", value)  # database_url's password
        return value


_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path
    database_url: str


@dataclass(frozen=True)
class HttpConfig:
    listen: str
    public_url: str
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For is believed


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
    give_up_after: float  # seconds an email is retried after a temporary failure
    relay_timeout: float  # seconds one whole SMTP conversation with the relay may take
    relay_connections: int  # kept-open relay connections, as many emails in flight
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
class TemplatesConfig:
    dir: Path | None  # the operator's override folder; None: built-in templates only


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9108"  # empty: no /metrics at all


@dataclass(frozen=True)
class LimitsConfig:
    manage_invitations_per_day: int = 5
    sign_in_failures_per_address: int = 10
    sign_in_failures_per_ip: int = 50
    sign_in_window_minutes: int = 15
    unproven_reply_answer_minutes: int = 60


@dataclass(frozen=True)
class RetentionConfig:
    inbound_days: int  # 0: keep forever
    outbox_days: int


@dataclass(frozen=True)
class GeneralConfig:
    default_locale: str
    timezone: str
    log_level: str
    product_name: str = "Cabinet"  # the name pages and emails show, and the From: name's "via …"


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
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    templates: TemplatesConfig = TemplatesConfig(dir=None)
    # Every key of SCHEMA, (section, key) -> its effective value and origin (for `cabinet config check`).
    settings: Mapping[tuple[str, str], Setting] = field(default_factory=dict, repr=False, compare=False)
    # CABINET_* environment variables that name no section: not refused (the environment is
    # shared with other tools) but shown by `cabinet config check` and logged by `cabinet serve`.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{self.storage.data_dir / 'cabinet.sqlite3'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def value(self, section: str, key: str) -> Any:
        """Any key of SCHEMA, typed (a path is absolute; an empty path or text is None or "")."""
        return self.settings[(section, key)].value

    def origin(self, section: str, key: str) -> str:
        return self.settings[(section, key)].origin


def _split_listen(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key} must look like HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def listen_address(value: str, key: str = "listen") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:8080`` for IPv6)."""
    return _split_listen(value, key)


def _did_you_mean(word: str, candidates: list[str], shown: str = "{}") -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean {shown.format(close[0])}?" if close else ""


def _check_file_keys(tree: Mapping[str, Any], source: Path) -> None:
    """Refuse unknown sections and keys: a typo would otherwise silently leave the default in force."""
    problems: list[str] = []
    sections = list(SCHEMA)
    for section, table in tree.items():
        if section not in SCHEMA:
            if isinstance(table, dict):
                problems.append(f"unknown section [{section}]{_did_you_mean(section, sections, '[{}]')}")
            else:
                homes = [s for s in sections if section in SCHEMA[s]]
                hint = f"; did you mean [{homes[0]}] {section}?" if homes else ""
                problems.append(f"unknown key {section} outside any section{hint}")
            continue
        if not isinstance(table, dict):
            problems.append(f"[{section}] must be a table")
            continue
        known = list(SCHEMA[section])
        for key in table:
            if key in SCHEMA[section]:
                continue
            hint = _did_you_mean(key, known)
            if not hint:
                homes = [s for s in sections if key in SCHEMA[s]]
                hint = f"; did you mean [{homes[0]}] {key}?" if homes else ""
            problems.append(f"unknown key [{section}] {key}{hint}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def _check_environment(env: Mapping[str, str]) -> tuple[str, ...]:
    """Refuse ``CABINET_<SECTION>_<TYPO>``; return warnings for CABINET_* names of no known section."""
    known = [env_name(section, key)[len(ENV_PREFIX):] for section in SCHEMA for key in SCHEMA[section]]
    problems: list[str] = []
    warnings: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX):]  # compared without the shared prefix, which would make all names alike
        if rest in known:
            continue
        hint = _did_you_mean(rest, known, ENV_PREFIX + "{}")
        if rest.split("_", 1)[0].lower() in SCHEMA:
            problems.append(f"unknown environment variable {name}{hint}")
        else:
            warnings.append(f"environment variable {name} is not a configuration key{hint}")
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(warnings)


class _Reader:
    """Reads each key of SCHEMA, typed, from the environment, else the file, else its default."""

    def __init__(self, tree: Mapping[str, Any], env: Mapping[str, str], base: Path, source: Path | None) -> None:
        self._tree = tree
        self._env = env
        self._base = base
        self._source = str(source) if source else ""
        self.settings: dict[tuple[str, str], Setting] = {}

    def get(self, section: str, key: str, derived: Any = None) -> Any:
        """The key's typed value; ``derived`` stands in for an empty value (see SCHEMA's docs)."""
        spec = SCHEMA[section][key]
        name = env_name(section, key)
        table = self._tree.get(section, {})
        if name in self._env:
            raw, origin = self._env[name], name
        elif key in table:
            raw, origin = table[key], self._source
        else:
            raw, origin = spec.default, DEFAULT
        value = self._parse(spec, raw, f"[{section}] {key}")
        if derived is not None and value in ("", None):
            value = derived
        # A secret is kept wrapped, so a Setting printed or logged by mistake still hides it.
        self.settings[(section, key)] = Setting(Secret(value) if spec.secret else value, origin, spec.secret)
        return value

    def settle(self, section: str, key: str, value: Any) -> None:
        """Record the value finally used (normalised or derived), keeping its origin."""
        before = self.settings[(section, key)]
        self.settings[(section, key)] = Setting(value, before.origin, before.secret)

    def _parse(self, spec: Key, value: Any, name: str) -> Any:
        kind = spec.kind
        if kind in ("text", "choice", "listen", "path"):
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {value!r}")
            if kind == "choice" and value not in spec.choices:
                raise ConfigError(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}")
            if kind == "listen":
                _split_listen(value, name)
            if kind == "path":
                if not value:
                    return None
                path = Path(value).expanduser()
                return path if path.is_absolute() else (self._base / path)
            return value
        if kind == "integer":
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
            if number < spec.minimum:
                raise ConfigError(f"{name} must be at least {spec.minimum}, got {number}")
            return number
        if kind == "number":
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if kind == "flag":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        if kind == "strings":
            if isinstance(value, str):  # from the environment: comma-separated
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of strings, got {value!r}")
            return tuple(value)
        raise AssertionError(f"unknown kind {kind!r} in SCHEMA for {name}")


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
        except OSError as exc:
            raise ConfigError(f"config file {source} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
        _check_file_keys(tree, source)
    warnings = _check_environment(env)
    base = source.parent if source else Path.cwd()
    r = _Reader(tree, env, base, source)

    data_dir: Path = r.get("storage", "data_dir", derived=base / "cabinet-data")
    storage = StorageConfig(data_dir=data_dir, database_url=r.get("storage", "database_url"))

    http_listen = r.get("http", "listen")
    host, port = _split_listen(http_listen, "[http] listen")
    public_url = r.get("http", "public_url", derived=f"http://{host}:{port}")
    if not public_url.startswith(("http://", "https://")):
        raise ConfigError(f"[http] public_url must start with http:// or https://, got {public_url!r}")
    public_url = public_url.rstrip("/")
    r.settle("http", "public_url", public_url)
    http = HttpConfig(listen=http_listen, public_url=public_url, trusted_proxies=r.get("http", "trusted_proxies"))

    smtp_listen = r.get("smtp", "listen")
    domain = r.get("smtp", "domain").lower()
    r.settle("smtp", "domain", domain)
    smtp = SmtpConfig(listen=smtp_listen, domain=domain)

    password = r.get("mail", "relay_password")
    password_file: Path | None = r.get("mail", "relay_password_file")
    if not password and password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"[mail] relay_password_file cannot be read: {exc}") from None
    relay = RelayConfig(
        host=r.get("mail", "relay_host"),
        port=r.get("mail", "relay_port"),
        tls=r.get("mail", "relay_tls"),
        user=r.get("mail", "relay_user"),
        password=Secret(password),
    )
    # An empty From: would be sent as is and fail at every recipient: empty means the default.
    from_address = r.get("mail", "from", derived=f"Cabinet <cabinet@{domain}>")
    if "@" not in parseaddr(from_address)[1]:
        raise ConfigError(f'[mail] from must be an address like "Cabinet <cabinet@{domain}>", got {from_address!r}')
    mail = MailConfig(
        from_address=from_address,
        transport=r.get("mail", "transport"),
        maildir=r.get("mail", "maildir", derived=data_dir / "maildir"),
        relay=relay,
        poll_interval=r.get("mail", "poll_interval"),
        give_up_after=r.get("mail", "give_up_after"),
        relay_timeout=r.get("mail", "relay_timeout"),
        relay_connections=r.get("mail", "relay_connections"),
        claim_lease=r.get("mail", "claim_lease"),
    )
    security = SecurityConfig(
        secret_keys_file=r.get("security", "secret_keys_file", derived=data_dir / "secret_keys"),
        session_hours=r.get("security", "session_hours"),
    )
    invitations = InvitationsConfig(ttl_days=r.get("invitations", "ttl_days"))
    scheduler = SchedulerConfig(interval=r.get("scheduler", "interval"))
    inbound = InboundConfig(
        protocol=r.get("inbound", "protocol"),
        max_message_size=r.get("inbound", "max_message_size"),
        max_recipients=r.get("inbound", "max_recipients"),
        max_line_length=r.get("inbound", "max_line_length"),
        timeout=r.get("inbound", "timeout"),
        max_connections=r.get("inbound", "max_connections"),
        max_attempts=r.get("inbound", "max_attempts"),
        trusted_authserv_ids=tuple(v.lower() for v in r.get("inbound", "trusted_authserv_ids")),
        dkim_verify=r.get("inbound", "dkim_verify"),
        firm_addresses=tuple(v.lower() for v in r.get("inbound", "firm_addresses")),
    )
    general = GeneralConfig(
        default_locale=r.get("general", "default_locale"),
        timezone=r.get("general", "timezone"),
        log_level=r.get("general", "log_level"),
        product_name=r.get("general", "product_name"),
    )
    metrics = MetricsConfig(listen=r.get("metrics", "listen"))
    if metrics.listen:
        _split_listen(metrics.listen, "[metrics] listen")
    limits = LimitsConfig(
        manage_invitations_per_day=r.get("limits", "manage_invitations_per_day"),
        sign_in_failures_per_address=r.get("limits", "sign_in_failures_per_address"),
        sign_in_failures_per_ip=r.get("limits", "sign_in_failures_per_ip"),
        sign_in_window_minutes=r.get("limits", "sign_in_window_minutes"),
        unproven_reply_answer_minutes=r.get("limits", "unproven_reply_answer_minutes"),
    )
    for section, keys in SCHEMA.items():  # keys without a dataclass field, read by config.value()
        for key in keys:
            if (section, key) not in r.settings:
                r.get(section, key)
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
            inbound_days=r.get("retention", "inbound_days"), outbox_days=r.get("retention", "outbox_days")
        ),
        metrics=metrics,
        limits=limits,
        templates=TemplatesConfig(dir=r.get("templates", "dir")),
        settings=r.settings,
        warnings=warnings,
    )
