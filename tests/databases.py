"""The test database as the processes a test starts reach it: over TCP (a machine's PostgreSQL) or over the Unix
socket of the embedded server (scripts/stack.py), whose folder goes percent-encoded in a URL's host part."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import connection


def database_url(name: str | None = None) -> str:
    """A DATABASE_URL (the owner of the tables) for this test process's database (or another database `name` of
    the same server). A process started with it connects as the application's role (DATABASE_APP_USER, set by
    tests/conftest.py), as this one does."""
    s = connection.settings_dict
    user = settings.DATABASE_OWNER.get("USER") or "enclave"
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


def admin_connect_kwargs() -> dict[str, Any]:
    """psycopg.connect() arguments of a role that may make roles, for the suite's application role only:
    DATABASE_ADMIN_URL when set, else the server's superuser `postgres` (trust on loopback, or the embedded
    server's socket)."""
    url = os.environ.get("DATABASE_ADMIN_URL", "")
    if url:
        return {"conninfo": url}
    return {**superuser_connect_kwargs(), "dbname": "postgres"}
