#!/usr/bin/env bash
# Start PostgreSQL and Redis on loopback when they are not running, and create the `enclave` role that the
# tests use (CREATEDB, so pytest-django can create its test databases). Idempotent.
set -euo pipefail

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "Starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "Starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
fi

psql_admin() { (cd / && psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA "$@"); }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='enclave'")" != "1" ]; then
  psql_admin -c "CREATE ROLE enclave LOGIN CREATEDB"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='enclave'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE enclave OWNER enclave"
fi
