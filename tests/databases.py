"""The test database as the processes a test starts reach it: over TCP (a machine's PostgreSQL) or over the Unix
socket of the embedded server (scripts/stack.py), whose folder goes percent-encoded in a URL's host part."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.db import connection


def database_url(name: str | None = None) -> str:
    """A DATABASE_URL for this test process's database (or another database `name` of the same server)."""
    s = connection.settings_dict
    user = s.get("USER") or "enclave"
    host = s.get("HOST") or "127.0.0.1"
    dbname = name or s["NAME"]
    if host.startswith("/"):
        return f"postgres://{user}@{quote(host, safe='')}/{dbname}"
    return f"postgres://{user}@{host}:{s.get('PORT') or 5432}/{dbname}"


def superuser_connect_kwargs() -> dict[str, Any]:
    """psycopg.connect() arguments for the server's superuser `postgres` on the test database."""
    s = connection.settings_dict
    host = s.get("HOST") or "127.0.0.1"
    kwargs: dict[str, Any] = {"host": host, "user": "postgres", "dbname": s["NAME"]}
    if not host.startswith("/"):
        kwargs["port"] = int(s.get("PORT") or 5432)
    return kwargs
