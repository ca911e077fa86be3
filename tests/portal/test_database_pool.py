"""Database connections past one machine (issue 10; README "Past one machine"): psycopg's pool from DB_POOL_MAX,
PgBouncer (session mode) from DB_PGBOUNCER, each tried on a real connection to the test database."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.utils import ConnectionHandler

from portal.settings.base import database_from_url
from tests.databases import database_url
from tests.portal.test_settings import PRODUCTION_ENV, _manage

ALIAS = "pooled"


def _test_database_url() -> str:
    """The URL of the test database this session created (not the development one DATABASE_URL names)."""
    return database_url()


def _handler(config: dict) -> ConnectionHandler:
    return ConnectionHandler({"default": {"ENGINE": "django.db.backends.dummy"}, ALIAS: config})


@pytest.fixture
def handler() -> Any:
    """Connections of their own, under an alias of their own (Django keeps one pool per alias, process-wide), so
    they never touch the tests' default connection. Every pool made is closed afterwards."""
    handlers: list[ConnectionHandler] = []

    def make(config: dict) -> Any:
        made = _handler(config)
        handlers.append(made)
        return made[ALIAS]

    yield make
    for made in handlers:
        made.close_all()
        wrapper = made[ALIAS]
        if ALIAS in wrapper._connection_pools:
            wrapper.close_pool()


def test_without_db_pool_max_there_is_no_pool(monkeypatch):
    monkeypatch.delenv("DB_POOL_MAX", raising=False)
    monkeypatch.delenv("DB_PGBOUNCER", raising=False)
    config = database_from_url(_test_database_url(), conn_max_age=60)
    assert "pool" not in config["OPTIONS"]
    assert config["CONN_MAX_AGE"] == 60
    assert not config.get("DISABLE_SERVER_SIDE_CURSORS")


def test_db_pool_max_gives_each_process_a_pool_that_real_connections_come_from(db, monkeypatch, handler):
    monkeypatch.setenv("DB_POOL_MAX", "3")
    monkeypatch.setenv("DB_POOL_TIMEOUT", "5")
    config = database_from_url(_test_database_url(), conn_max_age=60)
    assert config["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 3, "timeout": 5.0}
    assert config["CONN_MAX_AGE"] == 0  # Django refuses persistent connections beside a pool

    wrapper = handler(config)
    backends: list[int] = []

    def query() -> None:
        # Each thread has its own wrapper and takes a connection of the shared pool, then gives it back.
        from_thread = _handler(config)[ALIAS]
        try:
            with from_thread.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid(), current_database()")
                pid, name = cursor.fetchone()
            assert name == connection.settings_dict["NAME"]
            backends.append(pid)
        finally:
            from_thread.close()  # back to the pool, not closed

    for _ in range(3):
        threads = [threading.Thread(target=query) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(backends) == 9
    pool = wrapper.pool
    assert pool is not None
    assert pool.max_size == 3
    # Nine queries from nine wrappers, served by at most three server connections of the pool.
    assert len(set(backends)) <= 3
    assert pool.get_stats()["pool_size"] <= 3


def test_db_pool_max_with_persistent_connections_is_refused_by_django(db, monkeypatch, handler):
    """CONN_MAX_AGE stays 0 with a pool whatever CONN_MAX_AGE says; had it not, Django would refuse to connect."""
    monkeypatch.setenv("DB_POOL_MAX", "2")
    monkeypatch.setenv("CONN_MAX_AGE", "600")
    config = database_from_url(_test_database_url())
    assert config["CONN_MAX_AGE"] == 0
    wrapper = handler({**config, "CONN_MAX_AGE": 600})
    with pytest.raises(ImproperlyConfigured, match="persistent connections"):
        wrapper.ensure_connection()


def test_db_pgbouncer_turns_off_server_side_cursors_and_persistent_connections(db, monkeypatch, handler):
    monkeypatch.delenv("DB_POOL_MAX", raising=False)
    monkeypatch.setenv("DB_PGBOUNCER", "true")
    config = database_from_url(_test_database_url(), conn_max_age=60)
    assert config["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert config["CONN_MAX_AGE"] == 0
    wrapper = handler(config)
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    # No prepared statements either (a server connection passes from client to client between sessions).
    assert wrapper.connection.prepare_threshold is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"conn_max_age": 600, "pool": None, "no_server_side_cursors": False}),
        ({"DB_POOL_MAX": "8"}, {"conn_max_age": 0, "pool": 8, "no_server_side_cursors": False}),
        ({"DB_PGBOUNCER": "true"}, {"conn_max_age": 0, "pool": None, "no_server_side_cursors": True}),
    ],
)
def test_production_settings_keep_persistent_connections_only_without_a_pool_or_pgbouncer(extra, expected):
    """portal.settings.production as a process would load it: 600 s persistent connections by default, none beside
    a pool (Django would refuse to start) or behind PgBouncer."""
    show = (
        "import json; from django.conf import settings; d = settings.DATABASES['default']; "
        "print(json.dumps({'conn_max_age': d['CONN_MAX_AGE'], "
        "'pool': (d['OPTIONS'].get('pool') or {}).get('max_size'), "
        "'no_server_side_cursors': bool(d.get('DISABLE_SERVER_SIDE_CURSORS'))}))"
    )
    env = {**PRODUCTION_ENV, **extra}
    result = _manage("shell", "-c", show, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, 600),
        ({"CONN_MAX_AGE": "5"}, 5),
        ({"DB_POOL_MAX": "8"}, 0),
        ({"DB_PGBOUNCER": "true"}, 0),
    ],
)
def test_make_runs_settings_keep_the_applications_connections_as_production_does(monkeypatch, extra, expected):
    """portal.settings.local (`make run`, the benchmarks) as a process loads it: the application's connections
    persist (APP_CONN_MAX_AGE) as production's do; before, each request connected anew and prepared its statements
    again. None persist beside a pool or behind PgBouncer; CONN_MAX_AGE overrides."""
    for name in ("CONN_MAX_AGE", "DB_POOL_MAX", "DB_PGBOUNCER", "DATABASE_APP_URL"):
        monkeypatch.delenv(name, raising=False)
    show = (
        "from django.conf import settings; d = settings.DATABASES['default']; "
        "print(d['USER'], d['CONN_MAX_AGE'])"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "portal.settings.local",
        "DATABASE_URL": "postgres://enclave@db.example.org:5432/enclave",
        **extra,
    }
    result = _manage("shell", "-c", show, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"enclave_app {expected}"
