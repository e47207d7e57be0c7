"""`cabinet serve` compiles what its hot paths use before it answers, and its templates again after a reload:
the first link page and the first accept after a start or a SIGHUP pay no compilation on the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.config import LOCALES
from daemon.service import HOT_EMAILS, HOT_PAGES
from tests.conftest import WAIT_TIMEOUT, Cli, Env, FakeClock, RunningServer, write_config


def template_names(env) -> set[str]:
    """The templates a jinja environment has compiled (its cache is keyed by (loader, name))."""
    return {name for _, name in env.cache.keys()}


def assert_templates_compiled(service) -> None:
    pages = service.pages
    for locale in LOCALES:
        compiled = template_names(pages._envs[locale])
        # The pages themselves and what they extend and import, loaded by jinja only at their first rendering.
        assert set(HOT_PAGES) | {"layout.html"} <= compiled, (locale, compiled)
        assert {(locale, name) for name in HOT_PAGES} <= set(pages._templates)
    assert set(HOT_PAGES) <= set(pages._reads_clock)
    renderer = service.cabinet.renderer
    emails = template_names(renderer._env)
    for name in HOT_EMAILS:
        for locale in LOCALES:
            assert {f"{locale}/{name}.{part}" for part in ("subject", "txt", "html")} <= emails
            assert (name, locale) in renderer._subjects and (name, locale) in renderer._parts
    assert "layout.html" in emails


def test_serve_compiles_the_hot_paths_before_the_first_request(server) -> None:
    assert_templates_compiled(server.service)
    roster = vars(server.cabinet.roster)
    # The statements the link page and the accept compile once per engine (cached properties).
    assert {"_invitation_page", "_user_with_firms", "_accept_read"} <= set(roster)
    assert "_session_user" in vars(server.service.web_sessions)


def test_a_reload_compiles_the_templates_again(server) -> None:
    old_env = server.service.pages._envs[LOCALES[0]]

    async def reload() -> None:  # on the server's loop, as its SIGHUP handler runs it
        server.service.reload()

    asyncio.run_coroutine_threadsafe(reload(), server.loop).result(WAIT_TIMEOUT)
    assert server.service.pages._envs[LOCALES[0]] is not old_env
    assert_templates_compiled(server.service)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """Instances here read overrides from ``overrides/``, next to their config file (empty unless a test
    writes one)."""
    (tmp_path / "overrides").mkdir()
    return write_config(tmp_path, '\n[templates]\ndir = "overrides"\n')


def test_the_warm_up_compiles_the_operators_overrides_and_a_broken_one_does_not_stop_serve(
    env: Env, cli: Cli, clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:
    web = env.root / "overrides" / "web"
    web.mkdir()
    (web / "invitation.html").write_text('{% extends "layout.html" %}{% block content %}Ours{% endblock %}')
    (web / "sign_in.html").write_text("{% if %}")  # fails on its own request, as it always did
    running = RunningServer(env, clock)
    running.start()
    try:
        pages = running.service.pages
        for locale in LOCALES:
            template, _ = pages._templates[(locale, "invitation.html")]
            assert template.filename == str(web / "invitation.html")
            assert (locale, "sign_in.html") not in pages._templates
        assert "sign_in.html" in caplog.text
        assert running.service.http_port  # serving
    finally:
        running.stop()
