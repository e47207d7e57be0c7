#!/usr/bin/env bash
# Install everything the tests need, then run them.
#   ./scripts/test.sh            the whole suite
#   ./scripts/test.sh -k accept  extra arguments go to pytest
# Debian packages (chromium for the browser tests) are installed with apt-get
# when missing; that needs root or sudo. Python packages go into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "Installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'

export CABINET_CHROMIUM="${CABINET_CHROMIUM:-$(command -v chromium)}"
exec .venv/bin/python -m pytest "$@"
