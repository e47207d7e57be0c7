#!/usr/bin/env bash
# Cabinet's benchmark: every hot path as a ratio against a ceiling measured in the same run.
#   ./bench/run.sh                 SQLite, every path, 3 rounds
#   ./bench/run.sh --big           also the 100k client list and the 1M-row roster
#   ./bench/run.sh --postgres URL  on a PostgreSQL server (maintenance database URL)
#   ./bench/run.sh --help          every option
# Installs wrk (Debian) when missing, and Cabinet into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
if [ ! -x .venv/bin/cabinet ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
fi
exec .venv/bin/python -m bench.run "$@"
