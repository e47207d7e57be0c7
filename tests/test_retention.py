"""Retention: old mail goes, mail an open state still needs stays ([retention], `cabinet db prune`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from daemon.app import Cabinet, build
from daemon.config import load_config
from daemon.retention import Retention
from daemon.scheduler import Scheduler
from tests.conftest import Cli, Env, FakeClock, Seed


@pytest.fixture
def cabinet(env: Env, cli: Cli, clock: FakeClock) -> Iterator[Cabinet]:
    built = build(load_config(env.config_path), clock=clock)
    yield built
    built.close()


def test_prune_deletes_old_mail_but_never_what_an_open_state_needs(
    cabinet: Cabinet, cli: Cli, seed: Seed, env: Env, clock: FakeClock
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)  # stays pending
    cli("invitation", "send", "--company", seed.company, "--email", "other@gagnon.example")
    revoked = next(i for i in json.loads(cli("invitation", "list", "--json").output) if i["email"] == "other@gagnon.example")
    cli("invitation", "revoke", str(revoked["id"]))
    assert asyncio.run(cabinet.worker.send_due()) >= 2
    old = b"From: a@b.example\r\nTo: clients@cabinet.example\r\nSubject: hi\r\nMessage-ID: <1@b.example>\r\n\r\nhello\r\n"
    processed = cabinet.inbound.store("a@b.example", ["clients@cabinet.example"], old)
    cabinet.inbound.process(processed)
    waiting = cabinet.inbound.store("a@b.example", ["clients@cabinet.example"], old.replace(b"<1@", b"<2@"))

    # Young: nothing goes.
    assert Retention(cabinet.sessions, cabinet.clock, cabinet.config).prune() == {"inbound_pruned": 0, "outbox_pruned": 0}
    clock.advance(days=181)
    retention = Retention(cabinet.sessions, cabinet.clock, cabinet.config)
    assert retention.prune() == {"inbound_pruned": 1, "outbox_pruned": 1}
    # The pending invitation's email stays (a bounce or a reply must still find it), whatever its age;
    # the revoked one's email went.
    assert [r.kind for r in env.sql("SELECT kind FROM outbox")] == ["invitation"]
    assert env.sql("SELECT count(*) FROM outbox WHERE invitation_id = :i", i=revoked["id"]) == [(0,)]
    # The processed message went; the one still waiting to be processed stays.
    assert [r.id for r in env.sql("SELECT id FROM inbound")] == [waiting] and processed != waiting

    # The scheduler prunes too: once the invitation has expired (earlier in the same pass), its email can go.
    assert Scheduler(cabinet).run_due() == {"invitations_expired": 1, "outbox_pruned": 1}
    # The expiry notice it queued goes out, and in its turn grows old.
    asyncio.run(cabinet.worker.send_due())
    clock.advance(days=181)
    counts = Scheduler(cabinet).run_due()
    assert counts == {"outbox_pruned": 1}, counts
    assert env.sql("SELECT count(*) FROM outbox") == [(0,)]

    # The operator's command, on the system clock: nothing more is old enough.
    assert "Pruned 0 inbound messages and 0 sent emails." in cli("db", "prune").output
