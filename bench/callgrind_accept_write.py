"""Instructions per accept of the accept's own planning and writing, in-process: a figure neither the
machine's load nor the HTTP server's timing moves.

``bench.callgrind_accept`` counts a whole ``cabinet serve`` under load; on a shared machine its figure
moved 7% between two runs of the same code (2 December 2026), with how long a run took (the server's
periodic work, the batches' sizes) and with Python's string hash seed (dict lookups alone moved by
18-30k instructions an accept). This runs only ``Roster.plan_accept`` and
``Roster.accept_planned_many``, batches of ``BATCH``, on a copy of the same seed, with
``PYTHONHASHSEED=0``: repeatable to about 10k instructions an accept (dict layouts still move with
any code change). The difference of two runs (``FIRST`` and ``FIRST + --accepts`` accepts) divided
by ``--accepts`` is an accept's instructions without start-up and shut-down.

    .venv/bin/python -m bench.callgrind_accept_write WORKDIR [--accepts 256] [--batch 16] [--pythonpath DIR]

``--batch``: accepts planned then written together (the server's batches at its bench's load are of 1-2
accepts, where a group's fixed cost, its BEGIN, COMMIT and connection, is shared by few).

``--pythonpath``: a folder holding another checkout's ``daemon`` and ``mailer`` (``git archive``), run
with this interpreter: an A/B on one seed. WORKDIR is ``bench.callgrind_accept``'s (its seed is reused).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.callgrind import report
from bench.callgrind_accept import seeded
from bench.seed import ACCOUNTANT

BATCH = 16
FIRST = 32

# The counted process: ``count`` accepts of the seed's invitations, planned then written BATCH at a time
# (as the SQLite server's batches are), on a fresh copy of the seed. Run with ``-c`` from the folder whose
# ``daemon`` is measured (its working directory comes first on ``sys.path``). Arguments: the seed folder,
# the run's folder, the count, the accountant's address, the batch's size.
COUNTED = """
import json, shutil, sys
from pathlib import Path
seed, folder, count, accountant = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
batch = int(sys.argv[5])
shutil.rmtree(folder, ignore_errors=True)
shutil.copytree(seed, folder)
config_path = folder / "cabinet.toml"
config_path.write_text(config_path.read_text().replace(str(seed), str(folder)))
from daemon.app import build
from daemon.config import load_config
cabinet = build(load_config(config_path))
requests = json.loads(seed.with_suffix(".json").read_text())[:count]
tokens = [path.split("/invitations/")[1].split("/")[0] for path, _, _ in requests]
roster = cabinet.roster
user_id = roster.find_staff(accountant).id
for start in range(0, len(tokens), batch):
    plans = []
    for token in tokens[start:start + batch]:
        plan = roster.plan_accept(token, user_id, None)
        assert plan is not None, "the seed's invitations are pending"
        plans.append((plan, "link"))
    outcomes = roster.accept_planned_many(plans)
    assert all(o is not None and not isinstance(o, Exception) for o in outcomes), outcomes
cabinet.close()
"""


def counted(python: str, seed: Path, run: Path, count: int, out: Path, env: dict[str, str], cwd: Path,
            batch: int = BATCH) -> int:
    """Instructions of the counted process for ``count`` accepts, under callgrind (its file ``out``)."""
    log = out.with_suffix(".log")
    with log.open("wb") as handle:
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-c", COUNTED,
                        str(seed), str(run), str(count), ACCOUNTANT, str(batch)],
                       stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=True, timeout=1800)
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"no count in {log}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--accepts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=BATCH, help="accepts written together (default %(default)s)")
    parser.add_argument("--pythonpath", default="")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    folder, requests = seeded(args.work, 100 + 500, False)  # bench.callgrind_accept's seed (WARM + 500)
    if FIRST + args.accepts > len(requests):
        raise SystemExit(f"the seed holds {len(requests)} invitations")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    cwd = Path(args.pythonpath) if args.pythonpath else Path(__file__).resolve().parent.parent
    totals = [counted(sys.executable, folder, args.work / f"run-write{args.tag}-{count}", count,
                      args.work / f"write{args.tag}-{count}.cg", env, cwd, args.batch)
              for count in (FIRST, FIRST + args.accepts)]
    report(f"accept write{args.tag}", totals, args.accepts, "accept", args.work)


if __name__ == "__main__":
    main()
