"""The daily training-reminder job (issue 9), its worker killed with SIGKILL in the middle of a run and the job run
again by a new worker: each reminder is mailed exactly once, claimed once and audited once.

The kill lands at a known point: after some people's reminders are done, the test holds the tenant's audit chain
lock, so the worker stops inside the next person's reminder, at its audit write (after the claim and the mails),
and is killed there. The workers write their mail as files (Django's filebased backend) that the test reads.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, transaction

from audit.events import EventType
from audit.models import AuditChain, AuditEvent
from tenants.models import Role, Tenant, User
from tenants.scoping import tenant_scope
from tests.conftest import _member
from tests.integration.conftest import RestartableWorker
from tests.training.helpers import adopt, record, require, today
from training.models import DigestSent, ReminderSent
from training.tasks import training_reminders_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PEOPLE = 30
KILL_AFTER = 5  # reminders done before the audit lock is taken
FINISHED = re.compile(r"training\.tasks\.training_reminders_send\[[^\]]+\] succeeded")


def wait_for(predicate: Callable[[], bool], *, what: str, worker: RestartableWorker, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if worker.process is not None and worker.process.poll() is not None:
            pytest.fail(f"the worker exited early while waiting for {what}:\n{worker.output(-1)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; worker logs:\n{worker.output()[-8000:]}")
        time.sleep(0.05)


def mails(folder: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(subject, recipients) of every message the workers wrote. The filebased backend appends each message and a
    line of 79 dashes to a file named by the second and its connection's id, so one file may hold several."""
    found = []
    for path in sorted(folder.glob("*")):
        for part in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
            if not part.strip():
                continue
            message = email.message_from_bytes(part, policy=email.policy.default)
            to = tuple(sorted(a.strip() for a in str(message["To"]).split(",")))
            found.append((str(message["Subject"]).strip(), to))
    return found


def claimed(tenant: Tenant) -> int:
    with tenant_scope(tenant):
        return ReminderSent.objects.count()


def worker_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


def test_a_worker_killed_mid_run_and_the_job_run_again_mail_each_reminder_once(
    restartable_celery_worker: RestartableWorker, tenant_a: Tenant, compliance_a: User, tmp_path: Path
) -> None:
    worker = restartable_celery_worker
    folder = tmp_path / "mail"
    folder.mkdir()
    worker.env["ENCLAVE_TEST_EMAIL_BACKEND"] = "django.core.mail.backends.filebased.EmailBackend"
    worker.env["ENCLAVE_TEST_EMAIL_FILE_PATH"] = str(folder)

    course = adopt(tenant_a, compliance_a)
    require(tenant_a, compliance_a, course)
    people = [_member(tenant_a, Role.RADIOLOGIST, f"north-rad-{i:02}") for i in range(PEOPLE)]
    for person in people:
        record(tenant_a, compliance_a, person, course, expires_on=today() + timedelta(days=7))
    with tenant_scope(tenant_a):
        chain_key = AuditChain.key_for(tenant_a)
        assert AuditChain.objects.filter(key=chain_key).exists()

    worker.start()
    training_reminders_task.apply_async()
    wait_for(lambda: claimed(tenant_a) >= KILL_AFTER, what="the first reminders", worker=worker)
    with transaction.atomic(), tenant_scope(tenant_a):
        AuditChain.objects.select_for_update().get(key=chain_key)  # the worker's next audit write waits here
        wait_for(worker_waits_on_a_lock, what="the worker to wait on the audit lock", worker=worker)
        at_kill = claimed(tenant_a)
        worker.kill()
    assert KILL_AFTER <= at_kill < PEOPLE, f"killed after {at_kill} claims, not mid-run"

    # A new worker: Redis redelivers the killed run (acks late), and the daily job runs once more besides.
    worker.start()
    wait_for(lambda: len(FINISHED.findall(worker.output(-1))) >= 1, what="the redelivered run", worker=worker)
    training_reminders_task.apply_async()
    wait_for(lambda: len(FINISHED.findall(worker.output(-1))) >= 2, what="the second run", worker=worker)
    expected = 2 * PEOPLE + 1  # each person's reminder, the officers' copy of it, the weekly digest
    wait_for(lambda: len(mails(folder)) >= expected, what="the mail", worker=worker)
    time.sleep(3)  # a duplicate still in the queue would arrive now
    worker.stop()

    sent = Counter(mails(folder))
    officers = (compliance_a.email,)
    for person in people:
        assert sent[(f"Your training “{course.title}” expires on {(today() + timedelta(days=7)).isoformat()}",
                     (person.email,))] == 1, person.username  # fmt: skip
        officer_copy = [k for k in sent if k[0].startswith(f"Training expiring: {person.username},")]
        assert officer_copy, person.username
        assert all(k[1] == officers for k in officer_copy), person.username
        assert sum(sent[k] for k in officer_copy) == 1, person.username
    assert sum(n for (subject, _), n in sent.items() if subject.startswith("Training digest")) == 1
    assert sum(sent.values()) == expected, sent

    with tenant_scope(tenant_a):
        rows = Counter(ReminderSent.objects.values_list("user_id", "course_id", "expires_on", "stage"))
        assert len(rows) == PEOPLE
        assert set(rows.values()) == {1}
        assert DigestSent.objects.count() == 1
        audited = AuditEvent.objects.filter(event_type=EventType.TRAINING_REMINDER_SENT)
        per_person = Counter(
            p["id"] for e in audited.filter(extra__stage="7") for p in e.participants if p.get("type") == "user"
        )
        assert per_person == {str(p.subject_uuid): 1 for p in people}, per_person
        assert audited.filter(extra__has_key="digest_week_of").count() == 1
