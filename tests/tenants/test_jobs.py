"""Services queue tasks by name (tenants.jobs), so tasks may import services without an import cycle."""

from __future__ import annotations

import pytest
from celery.exceptions import NotRegistered

from studies.models import IngestItem
from tenants.jobs import task_queue_on_commit
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db


def test_an_unknown_task_name_fails_at_the_call(tenant_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(NotRegistered):
        task_queue_on_commit("studies.tasks.no_such_task", tenant_id=tenant_a.pk)
    assert callbacks == []


def test_the_named_task_runs_after_the_commit(tenant_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        task_queue_on_commit("studies.tasks.tenant_ingest_requeue", tenant_id=tenant_a.pk)
    assert len(callbacks) == 1
    callbacks[0]()  # eager in the test settings: the task itself runs, in its task context
    with tenant_scope(tenant_a):
        assert IngestItem.objects.count() == 0


FIRST_QUEUEING_IN_THREADS = """
import threading
import django
django.setup()
from tenants.jobs import _task
names = ["studies.tasks.ingest_process", "tenants.tasks.mail_send", "training.tasks.training_reminders",
         "studies.tasks.export_run", "studies.tasks.series_thumbnail", "tenants.tasks.memberships_end_due"] * 2
start, found, failed = threading.Barrier(len(names)), [], []
def look(name):
    start.wait()
    try:
        found.append(_task(name).name)
    except Exception as exc:
        failed.append(repr(exc))
threads = [threading.Thread(target=look, args=(n,)) for n in names]
for t in threads: t.start()
for t in threads: t.join()
print(len(found), len(failed), failed[:1])
"""


def test_the_first_queueing_from_many_threads_at_once_finds_every_task(tmp_path):
    """A threaded web server's first concurrent requests each queue a task by name before any tasks module is
    imported (a fresh process): every one must find its task (they once got NotRegistered, a 500)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test"}
    for _ in range(3):  # a fresh process each time: the race is in the very first look-ups
        out = subprocess.run([sys.executable, "-c", FIRST_QUEUEING_IN_THREADS], cwd=root, env=env,
                             capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        assert out.stdout.split()[:2] == ["12", "0"], out.stdout + out.stderr
