#!/usr/bin/env bash
# Install Cabinet into ./.venv and run it on its embedded defaults:
# SQLite and a Maildir in ./cabinet-data, HTTP on 127.0.0.1:8080, SMTP on 127.0.0.1:8025.
# Seeds a demo firm, accountant, company and invitation, and prints the link to open.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
.venv/bin/cabinet init
.venv/bin/cabinet demo
exec .venv/bin/cabinet serve
