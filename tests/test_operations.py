"""Operating Cabinet: health, readiness, metrics, logs, signals, one instance per SQLite file, backups."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading

import httpx
import pytest

from daemon.app import build
from daemon.config import load_config
from tests.conftest import START_TIMEOUT, Browser, Cli, Env, Mailbox, Seed, ServeProcess, link_in, wait_until


def serve(env: Env, *args: str) -> ServeProcess:
    return ServeProcess(env, *args).start()


def sqlite_only(env: Env) -> None:
    if "sqlite" not in getattr(env, "database_url", "sqlite"):
        pytest.skip("about the embedded SQLite database")


def test_health_readiness_and_metrics(server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env):
    assert httpx.get(f"{env.base_url}/healthz", timeout=60).text == "ok\n"
    ready = httpx.get(f"{env.base_url}/readyz", timeout=60)
    assert ready.status_code == 200 and ready.text == "ready\n"
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[0])
    Browser(env.base_url).get(link)
    # Not on the public listener: on [metrics] listen only.
    assert httpx.get(f"{env.base_url}/metrics", timeout=60).status_code == 404
    metrics = httpx.get(f"http://127.0.0.1:{server.service.metrics_port}/metrics", timeout=60)
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'cabinet_emails{state="sent"} 1.0' in text
    assert "cabinet_outbox_depth 0.0" in text
    assert "cabinet_outbox_oldest_age_seconds 0.0" in text
    assert 'cabinet_links_total{action="opened",purpose="invite"} 1.0' in text
    assert 'cabinet_invitations{state="pending"} 1.0' in text
    assert "cabinet_http_request_duration_seconds_count" in text
    assert link.rsplit("/", 1)[1] not in text  # no tokens in labels


def test_a_second_serve_on_the_same_sqlite_file_refuses(env: Env, cli: Cli):
    sqlite_only(env)
    first = serve(env)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "--config", str(env.config_path), "serve"],
            capture_output=True, text=True, timeout=START_TIMEOUT,
        )
        assert second.returncode == 78
        assert "another `cabinet serve`" in second.stderr and f"pid {first.pid}" in second.stderr
        assert httpx.get(f"{env.base_url}/healthz", timeout=60).status_code == 200  # the first one is unharmed
    finally:
        assert first.stop() == 0, first.tail()


def test_json_logs_never_carry_a_full_token_and_sighup_reloads(env: Env, cli: Cli, seed: Seed, mailbox: Mailbox):
    daemon = serve(env, "--log-format", "json")
    try:
        cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
        link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[0])
        token = link.rsplit("/", 1)[1]
        assert httpx.get(link, timeout=60).status_code == 200
        daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in daemon.output(), what="the SIGHUP reload to be logged", detail=daemon.tail)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.tail()
    finally:
        daemon.stop()
    lines = [line for line in daemon.output().splitlines() if line.strip() and not line.startswith("--- start")]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = " ".join(r["message"] for r in records)
    assert token not in messages and token[:20] not in messages
    assert f"/invitations/{token[:6]}…" in messages  # the access log, shortened
    assert any("SIGHUP" in r["message"] and "reloaded" in r["message"] for r in records)
    assert {"time", "level", "logger", "message"} <= records[0].keys()


def test_backup_is_consistent_while_serving(env: Env, cli: Cli, tmp_path):
    sqlite_only(env)
    daemon = serve(env)
    stop = threading.Event()

    writer_cabinet = build(load_config(env.config_path))
    written: list[int] = []

    def write() -> None:  # writes keep landing while the backup copies
        n = 0
        while not stop.is_set():
            writer_cabinet.roster.add_firm(f"Firm {n}", f"f{n}@firms.example")
            n += 1
            written.append(n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(written) >= 5 or not writer.is_alive(), what="the writer to be writing")
        assert writer.is_alive(), "the writer stopped"
        backup = tmp_path / "backup.sqlite3"
        result = cli("db", "backup", str(backup))
        assert "Backed up" in result.output
    finally:
        stop.set()
        writer.join(60)
        writer_cabinet.close()
        daemon.stop()
    copy = sqlite3.connect(backup)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        firms = copy.execute("SELECT count(*) FROM firms").fetchone()[0]
        assert firms >= 1
        assert copy.execute("SELECT version_num FROM alembic_version").fetchone() == tuple(env.sql("SELECT version_num FROM alembic_version")[0])
    finally:
        copy.close()
    assert "already exists" in cli("db", "backup", str(backup), expect=78).output


def test_db_upgrade_is_idempotent(cli: Cli, env: Env):
    assert "head" in cli("db", "upgrade").output
    assert "head" in cli("db", "upgrade").output
    from alembic.script import ScriptDirectory

    from daemon.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config(env.database_url)).get_current_head()
    assert env.sql("SELECT version_num FROM alembic_version") == [(head,)]


def test_metrics_read_the_database_once_per_max_age_not_per_scrape(env: Env, cli: Cli) -> None:
    from prometheus_client import generate_latest
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from daemon.app import build
    from daemon.config import load_config
    from daemon.metrics import Metrics

    cabinet = build(load_config(env.config_path))
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        metrics = Metrics(cabinet.sessions, cabinet.clock, cabinet.worker.stats)
        assert statements == []  # registering reads nothing
        first = generate_latest(metrics.registry).decode()
        read = len(statements)
        assert read > 0 and "cabinet_outbox_depth 0.0" in first
        for _ in range(5):
            generate_latest(metrics.registry)
        assert len(statements) == read  # later scrapes reuse the snapshot
    finally:
        event.remove(Engine, "before_cursor_execute", count)
        cabinet.close()
