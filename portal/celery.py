"""The Celery app (after cookiecutter-django's config/celery_app.py)."""

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.local")

app = Celery("portal", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _load_schedule() -> None:
    from portal.celery_schedule import BEAT_SCHEDULE

    app.conf.beat_schedule = BEAT_SCHEDULE


app.on_after_configure.connect(lambda sender, **kw: _load_schedule(), weak=False)


@task_prerun.connect(weak=False)
@task_postrun.connect(weak=False)
def _connections_tidy(sender: Any = None, **kwargs: Any) -> None:
    """Before and after a task, what Django does around a request: close a connection that is broken or older than
    CONN_MAX_AGE (settings CELERY_DB_REUSE_MAX keeps Celery from closing every one, every time). Not for a task
    run in-process (tests, CELERY_TASK_ALWAYS_EAGER): its caller's transaction may still be open."""
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


@worker_ready.connect(weak=False)
@worker_process_init.connect(weak=False)
def _process_settle(**kwargs: Any) -> None:
    """The main process once ready (it receives and hands out the messages: on the C-STORE path the cycle collector
    was most of its CPU, walking the loaded application), and each pool process once forked (there the large
    buffers matter: page faults of each instance's buffers): portal.web.runtime."""
    from portal.web.runtime import process_settle

    process_settle(what=f"Celery worker process {os.getpid()}")
