#!/usr/bin/env bash
# The wheel is the product: build it, install it with the postgres extra into a fresh venv
# outside the checkout, and run the README's service steps from an empty folder:
# init, a firm, a staff member, a company, an invitation, `cabinet serve` in the background,
# the emailed link page answers 200, the email is in the Maildir, SIGTERM stops serve with 0.
#   ./scripts/smoke_wheel.sh
# Builds with the checkout's .venv (made by scripts/test.sh, with the `build` test
# dependency) when it exists, else with python3. Installing the wheel's dependencies needs
# the package index. KEEP=1 keeps the temporary folder. On failure, serve's output is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT="$(pwd -P)"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
# Generous: a busy CI machine; every wait ends as soon as its condition holds.
TIMEOUT="${SMOKE_TIMEOUT:-180}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cabinet-smoke.XXXXXX")"
WORK="$(cd "$WORK" && pwd -P)"
case "$WORK/" in "$CHECKOUT"/*) echo "smoke_wheel.sh: $WORK is inside the checkout; set TMPDIR elsewhere" >&2; exit 1;; esac
SERVE_PID=""
SERVE_LOG="$WORK/serve.log"

finish() {
  local status=$?
  if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ] && [ -f "$SERVE_LOG" ]; then
    echo "----- cabinet serve's output -----" >&2
    if [ -s "$SERVE_LOG" ]; then cat "$SERVE_LOG" >&2; else echo "(nothing)" >&2; fi
    echo "----------------------------------" >&2
  fi
  if [ "${KEEP:-}" = 1 ]; then
    echo "smoke_wheel.sh: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "smoke_wheel.sh: FAILED: $*" >&2
  exit 1
}

step() { echo "== $*"; }

step "building the wheel"
if "$PY" -c 'import build' >/dev/null 2>&1; then
  # sdist first, then the wheel from the sdist: both must carry the templates.
  "$PY" -m build --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; fail "build"; }
else
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; fail "build"; }
fi
WHEEL="$(ls "$WORK"/dist/cabinet-*.whl)"
echo "$WHEEL"

step "installing it with the postgres extra into a fresh venv"
python3 -m venv "$WORK/venv"
VENV="$WORK/venv"
"$VENV/bin/pip" install --quiet "$WHEEL[postgres]" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; fail "pip install $WHEEL[postgres]"; }
"$VENV/bin/python" -c 'import psycopg' || fail "the postgres extra did not install psycopg"
CABINET="$VENV/bin/cabinet"

step "running it from an empty folder"
mkdir "$WORK/run"
cd "$WORK/run"
# Nothing from the caller's environment: embedded defaults plus free loopback ports.
while IFS= read -r name; do unset "$name"; done < <(env | sed -n 's/^\(CABINET_[A-Za-z0-9_]*\)=.*/\1/p')
free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
export CABINET_HTTP_LISTEN="127.0.0.1:$(free_port)"
export CABINET_SMTP_LISTEN="127.0.0.1:$(free_port)"
# /metrics too: its default port (9108) may be taken by any other Cabinet on the machine (a CI run
# failed on it: "address already in use" while another run's serve held it).
export CABINET_METRICS_LISTEN="127.0.0.1:$(free_port)"
export CABINET_MAIL_POLL_INTERVAL=0.5
BASE="http://$CABINET_HTTP_LISTEN"

"$CABINET" --version
"$CABINET" init
"$CABINET" firm add "Smoke CPA" --email office@smoke.example
echo "a smoke test passphrase" | "$CABINET" staff add accountant@smoke.example --name "Alex Accountant" \
  --firm "Smoke CPA" --password-stdin
"$CABINET" company add "Smoke Bakery" --admin-email owner@smoke.example --admin-name "Olivia Owner"
"$CABINET" mail preview invitation --locale fr >/dev/null || fail "cabinet mail preview"
SENT="$("$CABINET" invitation send --company "Smoke Bakery" --email accountant@smoke.example)"
echo "$SENT"
LINK="$(printf '%s\n' "$SENT" | sed -n 's/^Link: //p')"
[ -n "$LINK" ] || fail "cabinet invitation send printed no link"
case "$LINK" in "$BASE"/invitations/*) ;; *) fail "link $LINK is not on $BASE";; esac

step "starting cabinet serve"
"$CABINET" serve >"$SERVE_LOG" 2>&1 &
SERVE_PID=$!

# Poll CHECK (a Python expression on `url`) against URL until true, while serve runs.
wait_for() {
  local what="$1" url="$2" check="$3" deadline=$((SECONDS + TIMEOUT))
  until "$VENV/bin/python" - "$url" "$check" <<'PY' 2>/dev/null
import sys, urllib.request, urllib.error, mailbox
url, check = sys.argv[1], sys.argv[2]
def status(u):
    try:
        return urllib.request.urlopen(u, timeout=30).status
    except urllib.error.HTTPError as exc:
        return exc.code
def emails_to(address):
    box = mailbox.Maildir("cabinet-data/maildir", create=False)
    return [m for m in box if address in str(m["To"])]
sys.exit(0 if eval(check) else 1)
PY
  do
    kill -0 "$SERVE_PID" 2>/dev/null || { wait "$SERVE_PID" || true; fail "cabinet serve exited before $what"; }
    [ "$SECONDS" -lt "$deadline" ] || fail "no $what within $TIMEOUT s"
    sleep 0.2
  done
  echo "ok: $what"
}

wait_for "readiness (/readyz 200)" "$BASE/readyz" 'status(url) == 200'
wait_for "invitation page (200)" "$LINK" 'status(url) == 200'
wait_for "stylesheet (200)" "$BASE/static/cabinet.css" 'status(url) == 200'
wait_for "invitation email in the Maildir" "$LINK" \
  'any(url in (p.get_payload(decode=True) or b"").decode() for m in emails_to("accountant@smoke.example") for p in m.walk())'

step "stopping cabinet serve (SIGTERM)"
kill -TERM "$SERVE_PID"
code=0
wait "$SERVE_PID" || code=$?
SERVE_PID=""
[ "$code" -eq 0 ] || fail "cabinet serve exited $code after SIGTERM"
grep -q "Cabinet stopped" "$SERVE_LOG" || fail "serve did not log its orderly stop"
echo "smoke_wheel.sh: the installed wheel works"
