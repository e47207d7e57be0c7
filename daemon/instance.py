"""What an instance records about itself once, so every command agrees: the public URL of links.

Links are built by whichever process queues the email (`cabinet invitation send`,
`cabinet serve`, cron's `cabinet jobs run`), each with its own environment. If each
took ``[http] public_url`` from its own configuration, one forgotten variable would
email links to an address where nothing answers. So `cabinet init` records the URL in
the database and every command builds links from the recorded one. A configuration
that names a different one is refused, not silently overridden: moving links to a new
address is a deliberate step, `cabinet config set-public-url URL`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection, Engine, inspect, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from daemon.config import DEFAULT, Config, Setting
from daemon.db import WRITE
from daemon.errors import ConfigError
from daemon.faults import storage_fault
from daemon.models import InstanceSetting

PUBLIC_URL = "public_url"
RECORDED = "recorded with the instance (cabinet init / cabinet config set-public-url)"
_TABLE_NAME = InstanceSetting.__tablename__


def _read(connection: Connection, key: str) -> str | None:
    # Before `cabinet init` (or `cabinet db upgrade` to 0005) the table does not exist: nothing is recorded.
    if not inspect(connection).has_table(_TABLE_NAME):
        return None
    return connection.execute(select(InstanceSetting.value).where(InstanceSetting.key == key)).scalar_one_or_none()


def _database_error(config: Config, exc: SQLAlchemyError) -> ConfigError:
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    shown = Setting(config.database_url, "").shown()
    return ConfigError(f"cannot use the database {shown}: {reason}")


def recorded_public_url(engine: Engine, config: Config) -> str | None:
    try:
        with engine.connect() as connection:
            return _read(connection, PUBLIC_URL)
    except SQLAlchemyError as exc:
        # A database server that does not answer is a temporary fault (exit 75, try again later);
        # an SQLite file that cannot be opened is a setting to fix (exit 78).
        if not config.is_sqlite and storage_fault(exc) is not None:
            raise
        raise _database_error(config, exc) from None


def _refuse_if_configured_differently(config: Config, recorded: str) -> None:
    origin = config.origin("http", "public_url")
    configured = config.http.public_url
    if origin != DEFAULT and configured != recorded:
        raise ConfigError(
            f"[http] public_url is {configured} (from {origin}) but this instance's links use {recorded}; "
            f"to move links there run `cabinet config set-public-url {configured}`, else remove the setting"
        )


def with_recorded_public_url(config: Config, engine: Engine) -> Config:
    """``config`` with the recorded public URL in force (refused if the configuration names another)."""
    recorded = recorded_public_url(engine, config)
    if recorded is None:
        return config
    _refuse_if_configured_differently(config, recorded)
    settings = {**config.settings, ("http", "public_url"): Setting(recorded, RECORDED)}
    return replace(config, http=replace(config.http, public_url=recorded), settings=settings)


def record_public_url(engine: Engine, config: Config, now: datetime) -> str:
    """At `cabinet init`: record the configured public URL unless one is recorded already."""
    url = config.http.public_url
    try:
        with engine.connect() as connection, connection.execution_options(**WRITE).begin():
            recorded = _read(connection, PUBLIC_URL)
            if recorded is None:
                connection.execute(insert(InstanceSetting).values(key=PUBLIC_URL, value=url, updated_at=now))
                return f"recorded the public URL of links: {url}"
    except IntegrityError:  # another init recorded one meanwhile: that one stands
        recorded = recorded_public_url(engine, config)
    except SQLAlchemyError as exc:
        raise _database_error(config, exc) from None
    assert recorded is not None
    _refuse_if_configured_differently(config, recorded)
    return f"links use {recorded} (recorded with the instance)"


def change_public_url(engine: Engine, config: Config, url: str, now: datetime) -> str | None:
    """Record ``url`` as the public URL of links; returns the one it replaces (None if none was)."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the public URL must start with http:// or https://, got {url!r}")
    try:
        with engine.connect() as connection, connection.execution_options(**WRITE).begin():
            if not inspect(connection).has_table(_TABLE_NAME):
                raise ConfigError("the database has no schema yet; run `cabinet init` first")
            old = _read(connection, PUBLIC_URL)
            if old is None:
                connection.execute(insert(InstanceSetting).values(key=PUBLIC_URL, value=url, updated_at=now))
                return None
            changed = connection.execute(
                update(InstanceSetting)
                .where(InstanceSetting.key == PUBLIC_URL, InstanceSetting.value == old)
                .values(value=url, updated_at=now)
            ).rowcount
            if changed != 1:
                raise ConfigError("the public URL was changed by another command meanwhile; run this again")
            return old
    except IntegrityError:
        raise ConfigError("the public URL was recorded by another command meanwhile; run this again") from None
    except SQLAlchemyError as exc:
        raise _database_error(config, exc) from None
