"""The Celery app (after cookiecutter-django's config/celery_app.py)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.local")

app = Celery("portal", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _load_schedule() -> None:
    from portal.celery_schedule import BEAT_SCHEDULE

    app.conf.beat_schedule = BEAT_SCHEDULE


app.on_after_configure.connect(lambda sender, **kw: _load_schedule(), weak=False)
