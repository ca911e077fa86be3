"""The daily training-reminder job, run twice by a real Celery worker through Redis: each reminder goes once."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest

from audit.events import EventType
from audit.models import AuditEvent
from tenants.scoping import tenant_scope
from tests.training.helpers import adopt, record, require, today
from training.models import ReminderSent
from training.tasks import training_reminders_task

pytestmark = pytest.mark.integration


def test_the_job_run_twice_by_a_real_worker_reminds_once(celery_worker_process, tenant_a, compliance_a,
                                                         radiologist_a):  # fmt: skip
    course = adopt(tenant_a, compliance_a)
    require(tenant_a, compliance_a, course)
    record(tenant_a, compliance_a, radiologist_a, course, expires_on=today() + timedelta(days=7))

    for _ in range(2):
        result = training_reminders_task.apply_async()
        assert result.get(timeout=60, disable_sync_subtasks=False) >= 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_finished(celery_worker_process.output())) < 2:
        time.sleep(0.3)
    assert len(_finished(celery_worker_process.output())) == 2, celery_worker_process.output()
    with tenant_scope(tenant_a):
        assert ReminderSent.objects.filter(user=radiologist_a, stage="7").count() == 1
        sent = AuditEvent.objects.filter(event_type=EventType.TRAINING_REMINDER_SENT)
        assert sent.filter(extra__stage="7").count() == 1  # the reminder, once
        assert sent.filter(extra__has_key="digest_week_of").count() == 1  # the officers' weekly digest, once


def _finished(log: str) -> list[str]:
    """The per-tenant reminder tasks the worker finished (one tenant here, the job run twice: two)."""
    return re.findall(r"training\.tasks\.training_reminders_send\[[^\]]+\] succeeded", log)
