"""The PostgreSQL backend's instructions to store an email's bytes, per compression method: callgrind on a
single-user ``postgres`` (no client, no other backend: a count the machine's load does not move).

Each run stores the same emails (``tests/fixtures/emails/en``, a Message-ID line of their own ahead,
as the outbox's ``raw`` holds them) into a fresh table whose bytea column is compressed with pglz, lz4, or
not at all (``STORAGE PLAIN``, the baseline); the difference over the baseline, per email, is the
compression's cost. Migration 0020 chose lz4 for ``outbox.raw`` from this.

    .venv/bin/python -m bench.pg_compression [--emails 200]

Needs valgrind and PostgreSQL's server binaries (``/usr/lib/postgresql/*/bin``); as root, ``postgres`` runs
as the ``postgres`` user. The cluster lives in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

EMAILS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "emails" / "en"
METHODS = {"none": "SET STORAGE PLAIN", "pglz": "SET COMPRESSION pglz", "lz4": "SET COMPRESSION lz4"}


def script(method: str, emails: list[bytes], count: int) -> str:
    lines = ["CREATE TABLE t (id int, raw bytea);", f"ALTER TABLE t ALTER COLUMN raw {METHODS[method]};"]
    for n in range(count):
        body = f"Message-ID: <{n:08d}.bench@cabinet.example>\r\n".encode() + emails[n % len(emails)]
        lines.append(f"INSERT INTO t VALUES ({n}, '\\x{body.hex()}'::bytea);")
    lines.append("SELECT avg(pg_column_size(raw))::int AS stored FROM t;")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=200, help="emails stored per method")
    args = parser.parse_args(argv)
    bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1]).parent
    emails = [path.read_bytes() for path in sorted(EMAILS.glob("*.sample.eml"))]
    root = Path(tempfile.mkdtemp(prefix="cabinet-pgcompress-", dir="/tmp"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    try:
        subprocess.run([*as_owner, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres",
                        "--auth=trust", "--no-sync"], check=True, capture_output=True)
        instructions: dict[str, int] = {}
        for method in METHODS:
            # Each method in a database of its own, so the three runs start alike.
            out = root / f"callgrind.{method}"
            run = subprocess.run(
                [*as_owner, "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 str(bin_dir / "postgres"), "--single", "-D", str(root / "data"), "postgres"],
                input=script(method, emails, args.emails) + "DROP TABLE t;\n", capture_output=True, text=True,
                check=True)
            instructions[method] = int(re.search(r"Collected : (\d+)", run.stderr).group(1))  # type: ignore[union-attr]
            stored = re.search(r'stored = "(\d+)"', run.stdout)
            print(f"{method}: {instructions[method]:,} instructions; {stored.group(1) if stored else '?'} bytes stored "
                  "per email", flush=True)
        for method in ("pglz", "lz4"):
            print(f"{method}: {(instructions[method] - instructions['none']) / args.emails:,.0f} instructions per email "
                  "over storing it uncompressed")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
