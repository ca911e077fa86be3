"""Celery beat's scheduler: django-celery-beat's database scheduler, whose last write survives a Ctrl-C."""

from django.db import connection
from django_celery_beat.schedulers import DatabaseScheduler


class Scheduler(DatabaseScheduler):
    """Ctrl-C at a terminal signals beat twice: SIGINT from the terminal to the whole process group, then SIGTERM
    from `make run` stopping its children. When both land while beat's query runs, psycopg gives up cancelling the
    query and closes the connection ("query cancellation interrupted"). Django does not see it
    (close_old_connections closes only a connection that raised an error or outlived CONN_MAX_AGE), so beat's last
    sync, at its stop, failed with "the connection is closed" and a traceback, and lost the last run times it was
    writing. Before each sync, a connection that psycopg has closed is dropped, and Django opens a new one."""

    def sync(self) -> None:
        raw = connection.connection
        if raw is not None and raw.closed:
            connection.close()
        super().sync()
