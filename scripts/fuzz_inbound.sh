#!/bin/sh
# A longer fuzz run of inbound mail than the suite's: scripts/fuzz_inbound.sh [COUNT] [pytest options]
#
# COUNT hostile messages (default 30000) go through the store step's and the bounce
# detectors' parsing, a tenth of them through the daemon's store and process steps, a
# thirtieth through the real SMTP listener (tests/test_fuzz_inbound.py; the suite runs
# 3,000). Each part prints a summary line (inputs tried, refused, stored, lost). Set
# CABINET_TEST_DATABASE_URL to run it on PostgreSQL.
set -eu
cd "$(dirname "$0")/.."
count="${1:-30000}"
[ $# -gt 0 ] && shift
python="${PYTHON:-.venv/bin/python}"
CABINET_FUZZ_COUNT="$count" exec "$python" -m pytest tests/test_fuzz_inbound.py -q -p no:cacheprovider \
    -k "hostile or never_raise" "$@"
