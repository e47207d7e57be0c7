#!/usr/bin/env bash
# Cabinet's fault run: each fault against a real `cabinet serve`, with what came through.
#   ./bench/faults.sh                      every scenario (relay, kill, postgres, disk), ~10 minutes
#   ./bench/faults.sh --only relay,kill    some scenarios
#   ./bench/faults.sh --help               every option (longer outages, more load)
# PostgreSQL's scenario needs its server binaries (Debian: postgresql); the disk scenario needs root.
# Installs Cabinet into ./.venv when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/cabinet ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
fi
exec .venv/bin/python -m bench.faults "$@"
