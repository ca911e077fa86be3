"""Celery beat's last sync (portal.beat.Scheduler) against a connection that psycopg closed under Django: what a
Ctrl-C at a terminal does when SIGINT and `make run`'s SIGTERM both reach beat while a query of its runs."""

import logging

import pytest
from django.db import connection
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from portal.beat import Scheduler
from portal.celery import app as celery_app

ENTRY = "memberships-end-due"


@pytest.fixture
def persistent(monkeypatch):
    """Beat's connection as `make run` has it: kept between ticks (CONN_MAX_AGE), so close_old_connections keeps
    it too."""
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 600)
    yield
    connection.close()


def _last_sync_after_losing_the_connection(scheduler_class: type[DatabaseScheduler], caplog) -> DatabaseScheduler:
    """A scheduler of `scheduler_class` that sent its task, whose connection psycopg then closed, and its `sync`
    (what beat runs last at its stop), with the warnings it logged in `caplog`."""
    scheduler = scheduler_class(app=celery_app)
    scheduler.reserve(scheduler.schedule[ENTRY])  # beat sent the task: its run count and time wait for the sync
    connection.ensure_connection()
    # What psycopg does when a second signal interrupts its cancelling of a query: finish() the libpq connection.
    connection.connection.pgconn.finish()
    assert connection.connection.closed
    with caplog.at_level(logging.WARNING):
        scheduler.sync()
    return scheduler


@pytest.mark.django_db(transaction=True)
def test_the_last_sync_is_written_over_a_new_connection(persistent, caplog):
    scheduler = _last_sync_after_losing_the_connection(Scheduler, caplog)
    assert "Database error while sync" not in caplog.text
    assert not scheduler._dirty
    assert PeriodicTask.objects.get(name=ENTRY).total_run_count == 1
    assert celery_app.conf.beat_scheduler == "portal.beat:Scheduler"


@pytest.mark.django_db(transaction=True)
def test_without_it_the_last_sync_fails_and_loses_the_run(persistent, caplog):
    """The premise: django-celery-beat's own scheduler logs the error (with its traceback) and writes nothing."""
    _last_sync_after_losing_the_connection(DatabaseScheduler, caplog)
    assert "Database error while sync" in caplog.text
    assert "the connection is closed" in caplog.text
    connection.close()  # what the scheduler above does first
    assert PeriodicTask.objects.get(name=ENTRY).total_run_count == 0
