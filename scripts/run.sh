#!/usr/bin/env bash
# `make run`: what production runs, on this machine. PostgreSQL and Valkey (embedded, from their wheels, data in
# var/; or DATABASE_URL / REDIS_URL when both are set), then migrate, the demo, collectstatic, and gunicorn (static
# files by whitenoise), a Celery worker, Celery beat and the DICOM listener. Ctrl-C (SIGINT) or SIGTERM stops them
# all, then Valkey and PostgreSQL; the data stays for the next run.
#
# `scripts/run.sh --dev` (`make dev`): the same with Django's development server (DEBUG, autoreload) instead of
# gunicorn.
#
# Environment: WEB_PORT (8000), DICOM_PORT (11112), ENCLAVE_VAR_DIR (var/; a test gives its own), READY_SECONDS
# (600: how long the web server and the DICOM listener may take to answer before the run gives up); sized to the
# machine's cores (nproc): WEB_CONCURRENCY (gunicorn workers, 2 x cores + 1), DICOM_LISTENER_PROCESSES (listener
# processes sharing the DICOM port, one per core), INGEST_CONCURRENCY (ingest worker processes, one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="$ROOT/.venv/bin/python"
MODE=run
[ "${1:-}" = "--dev" ] && MODE=dev

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-portal.settings.local}"
export ENCLAVE_VAR_DIR="${ENCLAVE_VAR_DIR:-$ROOT/var}"
export WEB_PORT="${WEB_PORT:-8000}"
export DICOM_PORT="${DICOM_PORT:-11112}"
READY_SECONDS="${READY_SECONDS:-600}"
CORES="$(nproc)"
export WEB_CONCURRENCY="${WEB_CONCURRENCY:-$((2 * CORES + 1))}"
export DICOM_LISTENER_PROCESSES="${DICOM_LISTENER_PROCESSES:-$CORES}"
INGEST_CONCURRENCY="${INGEST_CONCURRENCY:-$CORES}"
# TLS_CERT / TLS_KEY (PEM): gunicorn serves HTTPS (portal/gunicorn_conf.py); TLS_CA verifies it for the ready check.
WEB_SCHEME=http
if [ -n "${TLS_CERT:-}" ] && [ "$MODE" = run ]; then WEB_SCHEME=https; fi
export PORTAL_BASE_URL="${PORTAL_BASE_URL:-${WEB_SCHEME}://127.0.0.1:${WEB_PORT}}"
export PYTHONUNBUFFERED=1
if [ "$MODE" = dev ]; then export DJANGO_DEBUG="${DJANGO_DEBUG:-true}"; fi
VAR="$ENCLAVE_VAR_DIR"
mkdir -p "$VAR/mail"
# One `make run` per var folder: a second one would share, then stop, the first one's PostgreSQL and Valkey.
if [ -f "$VAR/run.pid" ] && kill -0 "$(cat "$VAR/run.pid")" 2>/dev/null; then
  echo "Enclave is already running from $VAR (pid $(cat "$VAR/run.pid")); stop it first, or set ENCLAVE_VAR_DIR." >&2
  exit 1
fi
echo $$ > "$VAR/run.pid"

pids=()
names=()  # "pid=what it is" for each of pids, for the start-up check
ready_check=""  # the start-up check's pid while it runs
embedded=0
stopping=0

stop_all() {
  [ "$stopping" = 1 ] && return 0
  stopping=1
  trap '' INT TERM
  echo "Stopping Enclave: web, worker, beat, DICOM listener"
  local pid
  if [ -n "$ready_check" ]; then kill -TERM "$ready_check" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Each gets 30 s to finish what it is doing (gunicorn's graceful timeout is 25 s, not its default 10 s: on a busy
  # machine its workers may need longer to finish and exit), then is killed.
  for _ in $(seq 1 300); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "process $pid did not stop within 30 s: killed"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ "$embedded" = 1 ]; then
    "$PY" scripts/stack.py --dir "$VAR" stop
  fi
  rm -f "$VAR/run.pid"
  echo "Enclave stopped. Data kept in $VAR"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 129' HUP  # the terminal closed
trap 'stop_all' EXIT

# 1. PostgreSQL and Redis
if [ -n "${DATABASE_URL:-}" ] && [ -n "${REDIS_URL:-}" ]; then
  echo "Using DATABASE_URL and REDIS_URL from the environment"
  stack_note="PostgreSQL and Redis from DATABASE_URL and REDIS_URL"
else
  embedded=1
  stack_env="$("$PY" scripts/stack.py --dir "$VAR" start)"
  set -a
  eval "$stack_env"
  set +a
  stack_note="embedded PostgreSQL (data in $VAR/pg) and Valkey ($REDIS_URL, data in $VAR/valkey)"
fi

# 2. Schema, demo, static files
echo "$(date +%T) migrate"
"$PY" manage.py migrate --noinput -v 0
echo "$(date +%T) demo"
(umask 077; "$PY" manage.py demo > "$VAR/demo.txt")  # the demo users' TOTP secrets
if [ "$MODE" = run ]; then echo "$(date +%T) collectstatic"; "$PY" manage.py collectstatic --noinput -v 0; fi
echo "$(date +%T) starting gunicorn, worker, beat, listener"

# 3. What production runs. One worker for the ingest queue, one for the rest (portal/settings/base.py's routes), so
# that a flood of images never waits behind a fixity run, nor the other way round.
.venv/bin/celery -A portal worker -l info -c "$INGEST_CONCURRENCY" -Q ingest -n "ingest@%h" \
  --without-gossip --without-mingle & pids+=($!); names+=("$!=the Celery worker (ingest)")
.venv/bin/celery -A portal worker -l info -c 1 -Q default,maintenance -n "worker@%h" \
  --without-gossip --without-mingle & pids+=($!); names+=("$!=the Celery worker (default, maintenance)")
.venv/bin/celery -A portal beat -l info --pidfile= & pids+=($!); names+=("$!=Celery beat")
"$PY" manage.py dicom_listener --port "$DICOM_PORT" --processes "$DICOM_LISTENER_PROCESSES" \
  & pids+=($!); names+=("$!=the DICOM listener")
if [ "$MODE" = run ]; then
  # The access log names the path without its query string: a search's query holds patient data.
  # portal/gunicorn_conf.py: HTTPS when TLS_CERT / TLS_KEY are set; the access log's format (path without its
  # query string: a search's query holds patient data).
  .venv/bin/gunicorn portal.wsgi:application -c portal/gunicorn_conf.py --bind "127.0.0.1:${WEB_PORT}" \
    --worker-class gthread --workers "$WEB_CONCURRENCY" --threads 8 --timeout 120 --graceful-timeout 25 --no-control-socket \
    --error-logfile - --access-logfile - & pids+=($!); names+=("$!=gunicorn (the web server)")
else
  "$PY" manage.py runserver "127.0.0.1:${WEB_PORT}" & pids+=($!); names+=("$!=the development server")
fi

# 4. Ready: the sign-in page answers and the DICOM listener accepts connections (on a busy machine the processes
# take a while to import everything: a line every 30 s says what is still awaited). A process that ends meanwhile
# (a port already in use, a setting it refuses) ends the check at once, with its name, rather than leaving the run
# to wait READY_SECONDS. The check runs in the background and this shell `wait`s for it, so that a SIGTERM is
# handled at once (bash runs a trap only between commands, and a `wait` is where it may).
"$PY" - "$WEB_PORT" "$WEB_SCHEME" "$DICOM_PORT" "$READY_SECONDS" "${names[@]}" <<'EOF' &
import os, socket, ssl, sys, time, urllib.request
web_port, scheme, dicom_port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
processes = dict(item.split("=", 1) for item in sys.argv[5:])  # pid -> what it is
url = f"{scheme}://127.0.0.1:{web_port}/accounts/login/"
context = ssl.create_default_context(cafile=os.environ.get("TLS_CA") or None) if scheme == "https" else None


def web_ready():
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:
            return answer.status == 200
    except OSError:
        return False


def dicom_ready():
    try:
        with socket.create_connection(("127.0.0.1", dicom_port), timeout=5):
            return True
    except OSError:
        return False


def ended():
    """What has ended of the processes started: gone, or (Linux) a zombie that bash has not reaped yet."""
    gone = []
    for pid, name in processes.items():
        try:
            os.kill(int(pid), 0)
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    gone.append(name)
        except ProcessLookupError:
            gone.append(name)
        except OSError:
            pass  # no /proc: alive as far as kill can tell
    return gone


start = told = time.monotonic()
waiting = {"the web server": web_ready, f"the DICOM listener (port {dicom_port})": dicom_ready}
while True:
    gone = ended()
    if gone:
        sys.exit(f"{' and '.join(gone)} ended during start-up; its output above says why. Stopping the others.")
    waiting = {name: check for name, check in waiting.items() if not check()}
    if not waiting:
        break
    now = time.monotonic()
    if now - start > seconds:
        sys.exit(f"{' and '.join(waiting)} did not answer within {seconds:.0f} s (READY_SECONDS)")
    if now - told >= 30:
        print(f"still starting after {now - start:.0f} s: waiting for {' and '.join(waiting)}", flush=True)
        told = now
    time.sleep(0.2)
EOF
ready_check=$!
wait "$ready_check"  # its status: set -e ends the run (and the EXIT trap stops the rest) when it is not 0
ready_check=""

cat <<EOF

================================================================================
Enclave is running ($([ "$MODE" = run ] && echo "gunicorn, DEBUG off" || echo "development server, DEBUG on")).
  Web:    ${PORTAL_BASE_URL}/  (sign in at ${PORTAL_BASE_URL}/accounts/login/)
  DICOM:  127.0.0.1:${DICOM_PORT}, called AE title NORTH (calling DEMO_CT) or SOUTH (calling DEMO_MR), e.g.
          TCP_NODELAY=1 storescu -aet DEMO_CT -aec NORTH +sd +r 127.0.0.1 ${DICOM_PORT} some/folder/
  Stack:  ${stack_note}; Celery worker and beat
  Mail:   written as files to $VAR/mail/ (nothing is sent)
  Operators' admin: http://127.0.0.1:${WEB_PORT}/ops/ (user ops)
$(sed 's/^/  /' "$VAR/demo.txt")
Ctrl-C stops everything; the data stays in $VAR for the next run.
================================================================================
EOF

# 5. Until Ctrl-C, or until one of them ends by itself (then everything stops)
set +e
wait -n "${pids[@]}"
status=$?
set -e
# Ctrl-C reaches every process of the terminal's group: each stops cleanly (status 0), and bash, seeing its child
# handle the signal, may not run its own INT trap. So a clean end of any of them is taken as the request to stop.
if [ "$stopping" = 0 ]; then
  if [ "$status" = 0 ]; then
    stop_all
    exit 0
  fi
  echo "A process of Enclave ended by itself (status $status): stopping the others"
  stop_all
  exit 1
fi
