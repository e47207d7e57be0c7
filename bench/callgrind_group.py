"""Instructions per group of SQLite's group writer (``daemon.db.GroupWriter``), its fixed cost alone: a
figure neither the machine's load nor a server's timing moves.

At the accept bench's load the server's groups hold one or two accepts, so what a group costs whatever it
holds (its connection, BEGIN IMMEDIATE, the unit's SAVEPOINT and RELEASE, the COMMIT and its fsync's
system calls, the checkpoints' bookkeeping) is paid by each accept. This runs ``--groups`` groups of one
Core unit each, one small INSERT on the driver's cursor (as the accept's writes run), on a fresh database;
the difference of two runs (``FIRST`` and ``FIRST + --groups`` groups) divided by ``--groups`` is a group's
instructions without start-up and shut-down.

    .venv/bin/python -m bench.callgrind_group WORKDIR [--groups 400] [--pythonpath DIR] [--tag T]

``--pythonpath``: a folder holding another checkout's ``daemon`` (``git archive``), run with this
interpreter: an A/B.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.callgrind import report

FIRST = 40

# The counted process: ``count`` groups of one unit each on a fresh database at ``path``, then the writer
# and the engine closed (as ``Cabinet.close``). Run with ``-c`` from the folder whose ``daemon`` is measured.
COUNTED = """
import sys
from pathlib import Path
path, count = Path(sys.argv[1]), int(sys.argv[2])
for suffix in ("", "-wal", "-shm"):
    Path(str(path) + suffix).unlink(missing_ok=True)
from daemon import db
engine = db.make_engine(f"sqlite:///{path}")
with engine.begin() as connection:
    connection.exec_driver_sql("CREATE TABLE marks (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
writer = db.GroupWriter(engine)
writer.checkpoint_in_background()
for n in range(count):
    with writer.core_unit() as connection:
        connection.connection.driver_connection.execute("INSERT INTO marks (n) VALUES (?)", (n,))
writer.close()
engine.dispose()
"""


def counted(python: str, database: Path, count: int, out: Path, env: dict[str, str], cwd: Path) -> int:
    log = out.with_suffix(".log")
    with log.open("wb") as handle:
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-c", COUNTED,
                        str(database), str(count)],
                       stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=True, timeout=1800)
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"no count in {log}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--groups", type=int, default=400)
    parser.add_argument("--pythonpath", default="")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    cwd = Path(args.pythonpath) if args.pythonpath else Path(__file__).resolve().parent.parent
    totals = [counted(sys.executable, args.work / f"group{args.tag}-{count}.db", count,
                      args.work / f"group{args.tag}-{count}.cg", env, cwd)
              for count in (FIRST, FIRST + args.groups)]
    report(f"writer group{args.tag}", totals, args.groups, "group", args.work)


if __name__ == "__main__":
    main()
