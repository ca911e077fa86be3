"""A gunicorn worker registers every app's Celery tasks and builds Celery's producer pool when it starts
(portal/gunicorn_conf.py, tenants.jobs.messaging_warm), so that the first request that queues one (an upload, a
STOW-RS request) does not pay Celery's autodiscovery and its Django fix-up's checks (about a second of CPU), nor
the import of the broker's transport (about 0.1 s); and it builds Django's URL maps, so that the first reverse()
(a STOW-RS answer's URLs) does not pay their 18 ms. In a process of its own: the test process did all that long
ago."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import sys, time
sys.path.insert(0, {root!r})
import django
django.setup()
from celery import current_app
from portal import gunicorn_conf
from tenants import jobs
name = "studies.tasks.ingest_process"
assert not current_app.finalized, "the app was finalized before the worker started"
assert name not in current_app._tasks, "registered before the worker started"
assert current_app.amqp._producer_pool is None, "the producer pool was built before the worker started"
from django.urls import get_resolver
from django.utils.translation import get_language
assert get_language() not in get_resolver()._reverse_dict, "the URL maps were built before the worker started"
gunicorn_conf.post_worker_init(None)
assert get_language() in get_resolver()._reverse_dict, "the URL maps are left to the first reverse()"
assert current_app.finalized, "the app's finalization is left to the first queueing"
assert name in current_app._tasks, "not registered at the worker's start"
assert current_app.amqp._producer_pool is not None, "the producer pool is left to the first queueing"
import gc
assert gc.get_freeze_count() > 100_000, "the worker did not settle (portal.web.runtime)"
started = time.process_time()
jobs._task(name)  # what the first queueing of a request does before it publishes
current_app.producer_pool  # what its publish asks for first (Celery.send_task)
print(round((time.process_time() - started) * 1000, 3))
"""


def test_a_worker_registers_the_tasks_when_it_starts():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(root=str(ROOT))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The request's look-up of its task and of the producer pool are reads now, not the import of every app's tasks
    # and of the broker's transport (about 100 ms of CPU when it was left to the first request).
    assert float(done.stdout.split()[-1]) < 5, done.stdout
