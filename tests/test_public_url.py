"""One public URL: recorded by `cabinet init`, carried by every link whoever queues it."""

from __future__ import annotations

import logging

import httpx
import pytest
from click.testing import CliRunner, Result

from daemon.cli import cli as cabinet_cli
from tests.conftest import PASSWORD, Env, FakeClock, Mailbox, RunningServer, link_in


def run(env: Env, *args: str, environment: dict[str, str] | None = None, expect: int = 0,
        input: str | None = None) -> Result:
    result = CliRunner().invoke(cabinet_cli, [*args, "--config", str(env.config_path)], env=environment, input=input)
    assert result.exit_code == expect, (
        f"cabinet {' '.join(args)} exited {result.exit_code}, expected {expect}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{result.exception!r}"
    )
    return result


def seed(env: Env) -> None:
    run(env, "firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    run(env, "staff", "add", "marie@tremblay.example", "--name", "Marie Tremblay", "--firm", "Tremblay CPA",
        "--password-stdin", input=PASSWORD + "\n")
    run(env, "company", "add", "Boulangerie Roy", "--admin-email", "julie@roy.example", "--admin-name", "Julie Roy")


@pytest.fixture(autouse=True)
def _no_public_url_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CABINET_HTTP_PUBLIC_URL", raising=False)


def test_a_link_queued_from_the_cli_without_public_url_reaches_the_server(
    env: Env, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Only init is told the public URL: "localhost" rather than the listen address's 127.0.0.1,
    # so a link built from [http] listen instead of the recorded URL would show.
    public_url = f"http://localhost:{env.http_port}"
    init = run(env, "init", environment={"CABINET_HTTP_PUBLIC_URL": public_url})
    assert f"recorded the public URL of links: {public_url}" in init.stdout
    seed(env)
    caplog.set_level(logging.INFO, logger="daemon.service")
    server = RunningServer(env, clock)  # no public_url in its environment or file either
    server.start()
    try:
        assert f"emailed links carry {public_url} (recorded with the instance" in caplog.text
        run(env, "invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example")
        link = link_in(Mailbox(env.maildir).wait("marie@tremblay.example", subject="Invitation")[-1])
        assert link.startswith(f"{public_url}/invitations/"), link
        page = httpx.get(link, timeout=30)
        assert page.status_code == 200 and "Boulangerie Roy" in page.text
    finally:
        server.stop()


def test_a_different_configured_url_is_refused_until_it_is_recorded(env: Env) -> None:
    run(env, "init")
    seed(env)
    recorded = f"http://127.0.0.1:{env.http_port}"
    moved = "https://cabinet.tremblay.example"
    other = {"CABINET_HTTP_PUBLIC_URL": moved}
    refused = run(env, "invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example",
                  environment=other, expect=78)
    assert refused.stderr.splitlines() == [
        f"Error: [http] public_url is {moved} (from CABINET_HTTP_PUBLIC_URL) but this instance's links use "
        f"{recorded}; to move links there run `cabinet config set-public-url {moved}`, else remove the setting"
    ]
    assert Mailbox(env.maildir).messages() == []  # nothing was queued
    run(env, "init", environment=other, expect=78)  # init is no way around it
    run(env, "config", "check", environment=other, expect=78)

    changed = run(env, "config", "set-public-url", moved + "/")
    assert changed.stdout.strip() == f"Links now use {moved} (was {recorded})."
    # Now without any setting, and with the same one, links carry the new address.
    sent = run(env, "invitation", "send", "--company", "Boulangerie Roy", "--email", "marie@tremblay.example")
    assert f"Link: {moved}/invitations/" in sent.stdout
    run(env, "firm", "list", environment=other)
    check = run(env, "config", "check", "--json", environment=other)
    assert '"value": "https://cabinet.tremblay.example"' in check.stdout


def test_set_public_url_warns_when_the_configuration_still_names_another(env: Env) -> None:
    run(env, "init")
    result = run(env, "config", "set-public-url", "https://b.example",
                 environment={"CABINET_HTTP_PUBLIC_URL": "https://a.example"})
    assert "CABINET_HTTP_PUBLIC_URL still says https://a.example" in result.stderr


@pytest.mark.parametrize("url", ["ftp://cabinet.example", "cabinet.example"])
def test_set_public_url_refuses_what_is_not_a_web_address(env: Env, url: str) -> None:
    run(env, "init")
    result = run(env, "config", "set-public-url", url, expect=78)
    assert "must start with http:// or https://" in result.stderr


def test_init_again_keeps_the_recorded_url(env: Env) -> None:
    first = run(env, "init", environment={"CABINET_HTTP_PUBLIC_URL": "https://a.example"})
    assert "recorded the public URL of links: https://a.example" in first.stdout
    again = run(env, "init")
    assert "links use https://a.example (recorded with the instance)" in again.stdout
