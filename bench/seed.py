"""Seeding a benchmark instance through Cabinet's own domain (and, for the big
rosters, bulk rows through its own tables), in the bench process."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import insert, select

from daemon.app import Cabinet, build
from daemon.config import load_config
from mailer.maildir import list_mail, read_mail

PASSWORD = "bench horse battery staple"
FIRM = "Bench CPA"
ACCOUNTANT = "accountant@bench-cpa.example"
LINK = re.compile(r"https?://[^\s\"'<>]+/invitations/[A-Za-z0-9._\-]+")


@dataclass
class Seeded:
    invitation_paths: list[str]  # /invitations/<token>, one per company
    replies: list[tuple[str, str]]  # (from, reply+ address) of each invitation email


def app_for(config: Path) -> Cabinet:
    return build(load_config(config))


def flush(app: Cabinet) -> None:
    while asyncio.run(app.worker.send_due()):
        pass


def seed_invitations(config: Path, count: int, prefix: str = "Company") -> Seeded:
    """A firm, its accountant, ``count`` companies each inviting that accountant."""
    app = app_for(config)
    try:
        try:
            app.roster.add_firm(FIRM, "office@bench-cpa.example")
            app.roster.add_staff(ACCOUNTANT, "Bench Accountant", [FIRM], PASSWORD)
        except Exception:  # already there: a second seeding of the same instance
            pass
        for i in range(count):
            name = f"{prefix} {i:06d}"
            app.roster.add_company(name, f"admin{i}@{prefix.lower()}-{i}.example", admin_name=f"Admin {i}")
            app.roster.send_invitation(name, ACCOUNTANT)
        if app.config.mail.transport == "maildir":
            flush(app)
            return _from_maildir(app.config.mail.maildir)
        return Seeded([], [])
    finally:
        app.close()


def _from_maildir(maildir: Path) -> Seeded:
    paths: list[str] = []
    replies: list[tuple[str, str]] = []
    for item in list_mail(maildir, ACCOUNTANT):
        message: EmailMessage = read_mail(maildir, item.id)
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        match = LINK.search(text)
        if match:
            paths.append("/" + match.group(0).split("/", 3)[3])
        if message.get("Reply-To"):
            replies.append((ACCOUNTANT, str(message["Reply-To"].addresses[0].addr_spec)))
    return Seeded(paths, replies)


def bulk_clients(config: Path, count: int, chunk: int = 20_000) -> None:
    """``count`` active clients on the bench firm's roster, each with its company (bulk rows)."""
    from daemon.models import Client, Company, Firm

    app = app_for(config)
    try:
        now = datetime.now(timezone.utc)
        with app.sessions.begin() as s:
            firm_id = s.scalar(select(Firm.id).where(Firm.name == FIRM))
            start = s.query(Company).count()
        for base in range(start, start + count, chunk):
            stop = min(base + chunk, start + count)
            with app.sessions.begin() as s:
                companies = [
                    {
                        "name": f"Bulk {i:07d}",
                        "name_key": f"bulk {i:07d}",
                        "kind": "business",
                        "admin_email": f"admin{i}@bulk.example",
                        "admin_name": f"Admin {i}",
                        "admin_locale": "en",
                        "admin_timezone": "UTC",
                        "subscription": "self-paid",
                        "has_quickbooks_time": False,
                        "created_at": now,
                    }
                    for i in range(base, stop)
                ]
                ids = s.scalars(insert(Company).returning(Company.id), companies).all()
                s.execute(
                    insert(Client),
                    [
                        {
                            "firm_id": firm_id,
                            "company_id": company_id,
                            "kind": "business",
                            "name": f"Bulk {i:07d}",
                            "name_key": f"bulk {i:07d}",
                            "email": f"admin{i}@bulk.example",
                            "billing": "self-paid",
                            "status": "active",
                            "connected_at": now,
                            "created_at": now,
                        }
                        for i, company_id in zip(range(base, stop), ids)
                    ],
                )
    finally:
        app.close()


def reply_jobs(seeded: Seeded, count: int) -> list[dict[str, str]]:
    """``count`` replies of 3–8 KB to real reply+ addresses, each a distinct message."""
    jobs = []
    filler = "Merci pour l'invitation, nous regardons les documents cette semaine. " * 4
    for i in range(count):
        sender, address = seeded.replies[i % len(seeded.replies)]
        size = 3000 + (i * 977) % 5000
        quoted = "\n".join("> " + filler[:70] for _ in range(size // 72))
        jobs.append(
            {
                "from": sender,
                "to": address,
                "data": (
                    f"From: {sender}\nTo: {address}\nSubject: Re: Invitation {i}\n"
                    f"Message-ID: <bench-{i}-{size}@bench.example>\nDate: Mon, 30 Nov 2026 12:00:00 +0000\n"
                    f"Content-Type: text/plain; charset=utf-8\n\nHello, question {i} about the books.\n\n"
                    f"On Monday someone wrote:\n{quoted}\n"
                ),
            }
        )
    return jobs
