"""The two database roles (issue 14): the owner of the tables (settings.DATABASE_OWNER, from DATABASE_URL) and
the application's role (settings.DATABASES["default"]), which owns nothing.

`as_owner()` lends a Django connection the owner's credentials for a block (the migrations, the test runner's
flush): the same database, the same server, another role, in a platform scope (the tables' row-level security is
forced, so it holds the owner too). `app_role_grant()` gives the application's role what it may do, after every
migration (tenants.apps).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connections

from tenants.db import rowsecurity
from tenants.scoping import platform_scope


class DatabaseRoleError(RuntimeError):
    """The application's role is missing, or is the owner."""


def owner_user() -> str:
    return str(settings.DATABASE_OWNER.get("USER") or "")


def app_user() -> str:
    return str(settings.DATABASES["default"].get("USER") or "")


@contextmanager
def as_owner(alias: str = "default") -> Iterator[Any]:
    """Connection `alias` as the owner of the tables for the block (then as before), in a platform scope."""
    connection = connections[alias]
    if connection.in_atomic_block:
        raise DatabaseRoleError("The database role cannot change inside a transaction.")
    saved = {key: connection.settings_dict.get(key) for key in ("USER", "PASSWORD")}
    owner = {"USER": settings.DATABASE_OWNER.get("USER"), "PASSWORD": settings.DATABASE_OWNER.get("PASSWORD")}
    if saved == owner:
        with platform_scope():
            yield connection
        return
    connection.close()
    connection.enclave_app_user = saved["USER"]  # type: ignore[attr-defined]  # app_role_grant grants to it
    connection.settings_dict.update(owner)
    try:
        with platform_scope():
            yield connection
    finally:
        connection.close()
        connection.settings_dict.update(saved)


def app_role_grant(connection: Any, role: str | None = None) -> None:
    """Grant the application's role its rights on this database's tables, sequences and functions (idempotent).
    Run as the owner. DatabaseRoleError when the role does not exist (it is made by a superuser: README)."""
    role = role or getattr(connection, "enclave_app_user", None) or app_user()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, current_schema(), (SELECT count(*) FROM pg_roles WHERE rolname = %s)", [role]
        )
        current, schema, exists = cursor.fetchone()
        if role == current:
            return  # a single-role database (not a supported set-up: tests/security/test_row_security.py says so)
        if not exists:
            raise DatabaseRoleError(
                f"The application's database role {role!r} does not exist. A superuser makes it once (README, "
                f"'Database roles'): CREATE ROLE {role} LOGIN PASSWORD '...'; then migrate again."
            )
        for statement in rowsecurity.app_role_grant_sql(role, schema):
            cursor.execute(statement)
