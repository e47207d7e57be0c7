"""Scratch: where an accept's CPU goes on the write side (per SQL statement), in process.

usage: python scratch/measure_accept.py setup DIR N        seed DIR/template with N invitations
       python scratch/measure_accept.py run DIR VARIANT [batch]   copy the template, apply VARIANT's SQL, run
"""
from __future__ import annotations

import re
import shutil
import sqlite3
import sys
import time
from collections import defaultdict
from pathlib import Path

STATS: dict[str, list[float]] = defaultdict(list)
ON = [False]
LOG: list = []


def _key(sql: str) -> str:
    s = " ".join(sql.split())
    s = re.sub(r"\(\?(, \?)*\)", "(?..)", s)
    return s[:90]


class TimedCursor(sqlite3.Cursor):
    def execute(self, sql, *a):  # type: ignore[override]
        t = time.thread_time()
        try:
            return super().execute(sql, *a)
        finally:
            if ON[0]:
                STATS[_key(sql)].append(time.thread_time() - t)
                LOG.append(("one", sql, a[0] if a else ()))

    def executemany(self, sql, *a):  # type: ignore[override]
        t = time.thread_time()
        try:
            return super().executemany(sql, *a)
        finally:
            if ON[0]:
                STATS["MANY " + _key(sql)].append(time.thread_time() - t)
                LOG.append(("many", sql, list(a[0])))


class TimedConnection(sqlite3.Connection):
    def cursor(self, *a, **k):  # type: ignore[override]
        return super().cursor(TimedCursor)

    def execute(self, sql, *a):  # type: ignore[override]
        t = time.thread_time()
        try:
            return super().execute(sql, *a)
        finally:
            if ON[0]:
                STATS[_key(sql)].append(time.thread_time() - t)
                LOG.append(("one", sql, a[0] if a else ()))

    def commit(self):  # type: ignore[override]
        t = time.thread_time()
        try:
            return super().commit()
        finally:
            if ON[0]:
                STATS["COMMIT"].append(time.thread_time() - t)
                LOG.append(("commit", "COMMIT", ()))


_connect = sqlite3.connect


import os
EXTRA_PRAGMAS = [p for p in os.environ.get("PRAGMAS", "").split(";") if p]


def connect(*a, **k):
    k.setdefault("factory", TimedConnection)
    c = _connect(*a, **k)
    for p in EXTRA_PRAGMAS:
        c.execute(p)
    return c


sqlite3.connect = connect  # type: ignore[assignment]
import sqlite3.dbapi2
sqlite3.dbapi2.connect = connect  # type: ignore[assignment]

VARIANTS = {
    "base": [],
    "no_fts": ["DROP TRIGGER clients_search_insert", "DROP TRIGGER clients_search_update"],
    "no_counts": ["DROP TRIGGER firm_client_counts_insert", "DROP TRIGGER firm_client_counts_update"],
    "no_triggers": ["DROP TRIGGER clients_search_insert", "DROP TRIGGER clients_search_update",
                    "DROP TRIGGER firm_client_counts_insert", "DROP TRIGGER firm_client_counts_update"],
}


def setup(root: Path, n: int) -> None:
    from bench import seed
    from bench.instance import Instance
    inst = Instance(root / "template")
    inst.cli("init")
    seeded = seed.seed_invitations(inst.config, n)
    (root / "paths.txt").write_text("\n".join(seeded.invitation_paths))


def run(root: Path, variant: str, batch: int, extra: list[str]) -> None:
    work = root / f"run-{variant}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root / "template", work)
    cfg = work / "cabinet.toml"
    db = work / "data" / "cabinet.sqlite3"
    raw = _connect(db)
    for sql in VARIANTS.get(variant, []) + extra:
        raw.execute(sql)
    raw.commit()
    raw.close()
    from daemon.app import build
    from daemon.config import load_config
    from bench import seed
    app = build(load_config(cfg))
    roster = app.roster
    tokens = [p.rsplit("/", 1)[1] for p in (root / "paths.txt").read_text().split()]
    user = roster.get_user_by_email(seed.ACCOUNTANT) if hasattr(roster, "get_user_by_email") else None
    from sqlalchemy import select
    from daemon.models import User
    with app.sessions() as s:
        user_id = s.scalar(select(User.id).where(User.email == seed.ACCOUNTANT))
    warm = 32
    ON[0] = True
    LOG.clear()
    plan_t = write_t = 0.0
    done = 0
    for start in range(0, len(tokens), batch):
        chunk = tokens[start:start + batch]
        if start == warm:
            STATS.clear()
        t = time.thread_time()
        plans = [(roster.plan_accept(tok, user_id, None), "link") for tok in chunk]
        t2 = time.thread_time()
        out = roster.accept_planned_many(plans)
        t3 = time.thread_time()
        assert all(o is not None and not isinstance(o, Exception) for o in out), out
        if start >= warm:
            plan_t += t2 - t
            write_t += t3 - t2
            done += len(chunk)
    app.close()
    import pickle
    (root / f"log-{variant}.pickle").write_bytes(pickle.dumps(LOG))
    print(f"variant {variant} batch {batch}: {done} accepts; plan {plan_t / done * 1e6:.0f} us/accept, "
          f"write {write_t / done * 1e6:.0f} us/accept (incl. commit)")
    rows = sorted(STATS.items(), key=lambda kv: -sum(kv[1]))
    for k, v in rows[:25]:
        print(f"  {sum(v) / done * 1e6:7.1f} us/accept  n/accept {len(v) / done:5.2f}  mean {sum(v) / len(v) * 1e6:7.1f} us  {k}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    root = Path(sys.argv[2])
    if sys.argv[1] == "setup":
        setup(root, int(sys.argv[3]))
    else:
        run(root, sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 16, sys.argv[5:])
