#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite twice:
# on SQLite (the embedded default) and on a real PostgreSQL server.
#   ./scripts/test.sh            the whole suite, on both databases
#   ./scripts/test.sh -k accept  extra arguments go to pytest, in both runs
#   ./scripts/test.sh -m 'not slow'   without the kill/crash/instances tests
# Debian packages (chromium for the browser tests, postgresql for the second
# run, postfix for tests/test_postfix.py) are installed with apt-get when
# missing; that needs root or sudo.
# Python packages go into ./.venv. The PostgreSQL server is a throwaway
# cluster in a temporary folder, on a free loopback port, with trust
# authentication on loopback only; it is stopped and removed on exit.
# Both runs go at once, each spread over CABINET_TEST_WORKERS pytest-xdist
# workers (default: 2); most of a test's time is spent waiting for a daemon,
# so this is what finishes soonest on 2 cores. CABINET_TEST_WORKERS=0 and
# CABINET_TEST_SEQUENTIAL=1 give one process, one run after the other (and
# live output).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "test.sh: need root or sudo to run: $*" >&2
    exit 1
  fi
}

# The newest installed PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<version>/bin).
pg_bin() {
  local dir found=""
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] || continue
    if [ -z "$found" ] || [ "$(printf '%s\n%s\n' "$found" "$dir" | sort -V | tail -n1)" = "$dir" ]; then
      found="$dir"
    fi
  done
  [ -n "$found" ] && echo "$found"
}

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
pg_bin >/dev/null || need+=(postgresql)
# Debian's python3 ships venv's ensurepip separately.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The DKIM tests make their keys with openssl (through dkimpy).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# tests/test_postfix.py runs a private Postfix built from deploy/. Installed only where no mail
# server is (installing postfix would replace another MTA); the system's own Postfix is left
# unconfigured and stopped ("No configuration"): the test runs its own instance.
postfix_preseed=0
if ! command -v postfix >/dev/null 2>&1 && [ ! -e /usr/sbin/sendmail ]; then
  need+=(postfix)
  postfix_preseed=1
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${need[*]}"
  as_root apt-get update -qq
  if [ "$postfix_preseed" -eq 1 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PG_BIN="$(pg_bin)" || { echo "test.sh: PostgreSQL's initdb not found under /usr/lib/postgresql/*/bin" >&2; exit 1; }

# pip takes half a minute on a busy machine even when everything is installed (it rebuilds the
# editable wheel): skip it when .venv was made from this pyproject.toml by this Python and runs
# this checkout's code. CABINET_TEST_REINSTALL=1 installs anyway.
install_stamp=".venv/.cabinet-test-install"
wanted_install="$(sha256sum pyproject.toml | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version.split()[0])')"
if [ "${CABINET_TEST_REINSTALL:-0}" = "1" ] || [ "$(cat "$install_stamp" 2>/dev/null)" != "$wanted_install" ] \
    || ! .venv/bin/python -c 'import sys, daemon, pytest; sys.exit(not daemon.__file__.startswith(sys.argv[1]))' \
      "$(pwd -P)/" 2>/dev/null; then
  rm -f "$install_stamp"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
  echo "$wanted_install" >"$install_stamp"
else
  echo "Python packages: .venv is up to date with pyproject.toml (CABINET_TEST_REINSTALL=1 reinstalls)"
fi

export CABINET_CHROMIUM="${CABINET_CHROMIUM:-$(command -v chromium)}"

# --- a throwaway PostgreSQL cluster ----------------------------------------
# PostgreSQL refuses to run as root: as root, the cluster belongs to the
# `postgres` system user that Debian's package creates.
pg_as=()
if [ "$(id -u)" -eq 0 ]; then
  pg_as=(runuser -u postgres --)
fi
if [ "$(id -u)" -eq 0 ]; then
  PG_DIR="$(mktemp -d /tmp/cabinet-pg.XXXXXX)"  # where the postgres user can reach it
else
  PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cabinet-pg.XXXXXX")"
fi
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/server.log"

# Run a PostgreSQL program as the cluster's owner, from a folder that owner can read.
pg() { (cd "$PG_DIR" && "${pg_as[@]}" "$@"); }

stop_postgres() {
  if [ -f "$PG_DATA/postmaster.pid" ]; then
    pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
}
trap stop_postgres EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -ne 0 ] || chown postgres: "$PG_DIR"
pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync \
  >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
# Trust, but only over the Unix socket in PG_DIR and TCP from loopback (the server listens on nothing else).
printf '%s\n' 'local all all              trust' 'host  all all 127.0.0.1/32 trust' >"$PG_DATA/pg_hba.conf"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A free port can be taken between choosing it and binding it: try a few.
# fsync off: a throwaway cluster need not survive a power cut, and the tests run faster.
for attempt in 1 2 3 4 5; do
  PG_PORT="$(free_port)"
  if pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
      -o "-k $PG_DIR -p $PG_PORT -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null; then
    break
  fi
  if [ "$attempt" -eq 5 ]; then
    echo "test.sh: PostgreSQL did not start; its log:" >&2
    cat "$PG_LOG" >&2 || true
    exit 1
  fi
done
PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres"

# --- the two runs: both must pass -------------------------------------------
workers="${CABINET_TEST_WORKERS:-2}"
xdist=()
if [ "$workers" != "0" ]; then
  # worksteal: each worker starts on a contiguous share (a file's module fixtures, such as the
  # browser, mostly start once) and an idle one takes tests from a busy one (the kill tests
  # take minutes, most others seconds).
  xdist=(-n "$workers" --dist worksteal)
fi

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cabinet-test-runs.XXXXXX")"
run_pids=()
# Background runs ignore Ctrl-C (no job control in a script): stop them here.
stop_runs() {
  local pid
  for pid in "${run_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${run_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap 'stop_runs; stop_postgres; rm -rf "$RUN_DIR"' EXIT

# run_suite DATABASE_URL [pytest arguments]: one run of pytest (empty URL: SQLite). It execs
# pytest, so call it in a subshell: ( run_suite … ), whose pid is then pytest's. The two runs listen
# on loopback ports of their own (CABINET_TEST_PORT_SHARE, tests/conftest.py): at once, the same
# worker of each drew from the same ports, and a port one run had found free the other could bind
# before the first one's server did ("address already in use", CI, 3 December).
run_suite() {
  local url="$1"
  shift
  if [ -n "$url" ]; then
    CABINET_TEST_PORT_SHARE=1/2 CABINET_TEST_DATABASE_URL="$url" exec .venv/bin/python -m pytest "${xdist[@]}" "$@"
  else
    CABINET_TEST_PORT_SHARE=0/2 exec env -u CABINET_TEST_DATABASE_URL .venv/bin/python -m pytest "${xdist[@]}" "$@"
  fi
}

# The wheel as operators install it (outside the checkout, from an empty folder): alongside the
# suites, since most of its time is pip fetching packages.
smoke_title="===== The installed wheel (scripts/smoke_wheel.sh) ====="
smoke_status=0
./scripts/smoke_wheel.sh >"$RUN_DIR/smoke.out" 2>&1 &
smoke_pid=$!
run_pids+=("$smoke_pid")

sqlite_title="===== Tests on SQLite ====="
pg_title="===== Tests on PostgreSQL $(basename "$(dirname "$PG_BIN")") at $PG_URL ====="
sqlite_status=0
pg_status=0
if [ "${CABINET_TEST_SEQUENTIAL:-0}" = "1" ]; then
  wait "$smoke_pid" || smoke_status=$?
  echo; echo "$smoke_title (exited $smoke_status)"
  cat "$RUN_DIR/smoke.out"
  echo; echo "$sqlite_title"
  ( run_suite "" "$@" ) || sqlite_status=$?
  echo; echo "$pg_title (SQLite run exited $sqlite_status)"
  ( run_suite "$PG_URL" "$@" ) || pg_status=$?
else
  echo "Running the suite on SQLite and on PostgreSQL at once; each run's output follows when both are done."
  ( run_suite "" "$@" ) >"$RUN_DIR/sqlite.out" 2>&1 &
  sqlite_pid=$!
  run_pids+=("$sqlite_pid")
  ( run_suite "$PG_URL" "$@" ) >"$RUN_DIR/postgresql.out" 2>&1 &
  pg_pid=$!
  run_pids+=("$pg_pid")
  wait "$sqlite_pid" || sqlite_status=$?
  wait "$pg_pid" || pg_status=$?
  run_pids=()
  wait "$smoke_pid" || smoke_status=$?
  echo; echo "$smoke_title (exited $smoke_status)"
  cat "$RUN_DIR/smoke.out"
  echo; echo "$sqlite_title"
  cat "$RUN_DIR/sqlite.out"
  echo; echo "$pg_title (SQLite run exited $sqlite_status)"
  cat "$RUN_DIR/postgresql.out"
fi

run_pids=()

# Nothing printed after this point, so the output ends with the last run's pytest summary.
if [ "$smoke_status" -ne 0 ]; then
  echo "test.sh: the installed-wheel smoke test failed (exit $smoke_status); its output is above" >&2
  exit "$smoke_status"
fi
if [ "$sqlite_status" -ne 0 ]; then
  exit "$sqlite_status"
fi
exit "$pg_status"
