#!/usr/bin/env bash
# `make test`: the whole suite on PostgreSQL and Redis, two processes in parallel. With DATABASE_URL and REDIS_URL
# unset (CI, a fresh machine) it starts the embedded stack (scripts/stack.py) in var/test-stack/, runs the tests
# against it (the workers and listeners the integration tests start get the same URLs), and stops it at the end.
# The exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

scripts/system-deps.sh

STACK_DIR="${ENCLAVE_TEST_STACK_DIR:-$PWD/var/test-stack}"
if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  stack_env="$("$PY" scripts/stack.py --dir "$STACK_DIR" start --for-tests)"
  set -a
  eval "$stack_env"
  set +a
  trap '"$PY" scripts/stack.py --dir "$STACK_DIR" stop' EXIT
  echo "Tests on the embedded stack in $STACK_DIR"
fi
unset ENCLAVE_VAR_DIR

set +e
.venv/bin/pytest -n 2 --dist loadfile "$@"
status=$?
set -e
exit "$status"
