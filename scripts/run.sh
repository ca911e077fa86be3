#!/usr/bin/env bash
# `make run`: migrate, load the demo and serve the portal on 127.0.0.1:$WEB_PORT.
# With DATABASE_URL and REDIS_URL set, a Celery worker and beat run beside the web server (tasks go
# through Redis); without them tasks run in-process (in the web server and in the DICOM listener) on SQLite
# under var/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-portal.settings.local}"
PORT="${WEB_PORT:-8000}"
mkdir -p var

$PY manage.py migrate --noinput
$PY manage.py demo

pids=()
cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if [ -n "${DATABASE_URL:-}" ] && [ -n "${REDIS_URL:-}" ]; then
  echo "Starting a Celery worker and beat (broker: REDIS_URL)"
  .venv/bin/celery -A portal worker -l info -c 2 -Q default,maintenance,ingest & pids+=($!)
  .venv/bin/celery -A portal beat -l info --pidfile= -s var/celerybeat-schedule & pids+=($!)
else
  echo "No DATABASE_URL/REDIS_URL: SQLite in var/, tasks run in-process."
fi

# The DICOM listener (DICOM_HOST/DICOM_PORT, default 127.0.0.1:11112): send to called AE NORTH as DEMO_CT,
# or to SOUTH as DEMO_MR.
$PY manage.py dicom_listener & pids+=($!)

echo "Enclave: http://127.0.0.1:${PORT}/  (demo users are listed above)"
$PY manage.py runserver "127.0.0.1:${PORT}" --noreload &
pids+=($!)
wait "${pids[-1]}"
