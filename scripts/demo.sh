#!/usr/bin/env bash
# Install Cabinet into ./.venv and run it on its embedded defaults:
# SQLite and a Maildir in ./cabinet-data, HTTP on 127.0.0.1:8080, SMTP on 127.0.0.1:8025.
# Seeds a demo firm, accountant, company and invitation, and prints the link to open.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's python3 ships venv's ensurepip separately: install it when missing (needs root or sudo).
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
.venv/bin/cabinet init
.venv/bin/cabinet demo
exec .venv/bin/cabinet serve
