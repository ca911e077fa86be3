#!/usr/bin/env bash
# `make test`: the whole suite against PostgreSQL and Redis on 127.0.0.1, two processes in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_URL="${DATABASE_URL:-postgres://enclave@127.0.0.1:5432/enclave}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
scripts/services.sh
scripts/system-deps.sh
exec .venv/bin/pytest -n 2 --dist loadfile "$@"
