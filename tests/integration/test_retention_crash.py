"""The retention job (issue 13, SECURITY.md H3), its real Celery worker killed with SIGKILL in the middle of a
tenant's run and the job run again: every study past its keep is proposed exactly once (one RETENTION_PROPOSED
event each), a study under a legal hold never, and the two-person deletion that follows deletes each study once
(one STUDY_DELETED, 110105, event each) and never the held one.

The kill lands at a known point: another connection holds an uncommitted open proposal for the fourth candidate
(in the job's primary-key order), so the worker, having committed the first three proposals, waits on the
open-proposal unique index inside the fourth, and is killed there.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from django.db import connection

from audit.events import EventType
from audit.models import AuditEvent
from portal.celery import app as celery_app
from studies.models import RetentionPolicy, RetentionProposal, RetentionTombstone, Study
from studies.services import retention
from studies.tasks import tenant_retention_proposals_make_task
from tenants.models import Tenant, User
from tenants.scoping import tenant_scope
from tests.integration.conftest import RestartableWorker
from tests.integration.held_rows import RowHeld
from tests.studies.retention_fixtures import policy_make, stored_study

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

OLD = 7  # studies past their keep
BLOCK_AT = 3  # proposals committed before the worker waits (the fourth candidate is held)
FINISHED = re.compile(r"studies\.tasks\.tenant_retention_proposals_make\[[^\]]+\] succeeded")


def wait_for(predicate: Callable[[], bool], *, what: str, worker: RestartableWorker, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if worker.process is not None and worker.process.poll() is not None:
            pytest.fail(f"the worker exited early while waiting for {what}:\n{worker.output(-1)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; worker logs:\n{worker.output()[-8000:]}")
        time.sleep(0.05)


def proposals(tenant: Tenant) -> int:
    with tenant_scope(tenant):
        return RetentionProposal.objects.count()


def proposal_insert_waiting() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            ['INSERT INTO "studies_retentionproposal"%'],
        )
        return bool(cursor.fetchone()[0])


def per_study(events: object, studies: list[Study]) -> Counter[str]:
    """How many of `events` name each study (by its UID among their participants)."""
    uids = {s.study_instance_uid for s in studies}
    return Counter(uid for e in events for uid in uids if uid in str(e.participants))  # type: ignore[attr-defined]


def pool_children(pid: int) -> list[int]:
    """The pool processes of the worker `pid` (its direct children)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def pid_is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def proposal_held(tenant: Tenant, study: Study) -> RowHeld:
    """An uncommitted open proposal for `study`, held by another connection until the block ends (rolled back)."""

    def insert() -> None:
        RetentionProposal.objects.create(
            tenant=tenant,
            study=study,
            study_instance_uid=study.study_instance_uid,
            policy=RetentionPolicy.objects.get(),
            due_on=date(2000, 1, 1),
        )

    return RowHeld(tenant, insert, what="proposal row", hold_seconds=240)


def test_the_retention_job_killed_mid_run_and_run_again_proposes_and_deletes_each_study_once(
    restartable_celery_worker: RestartableWorker,
    tenant_a: Tenant,
    admin_a: User,
    compliance_a: User,
) -> None:
    worker = restartable_celery_worker
    celery_app.conf.task_always_eager = True  # the studies are stored in-process; the job runs on the worker
    try:
        old = [stored_study(tenant_a, patient_id=f"RET-K{i}", study_date=date(2008, 1, 1 + i)) for i in range(OLD)]
        held = stored_study(tenant_a, patient_id="RET-KHOLD", study_date=date(2008, 2, 1))
        recent = stored_study(tenant_a, patient_id="RET-KNEW", study_date=date(2025, 2, 1))
    finally:
        celery_app.conf.task_always_eager = False
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        retention.legal_hold_place(actor=compliance_a, patient=held.patient, reason="Litigation K-1")
    candidates = sorted(old, key=lambda s: s.pk)

    worker.start()
    with proposal_held(tenant_a, candidates[BLOCK_AT]):
        tenant_retention_proposals_make_task.apply_async(kwargs={"tenant_id": tenant_a.pk})
        wait_for(proposal_insert_waiting, what="the worker to wait on the held proposal", worker=worker)
        at_kill = proposals(tenant_a)
        worker.kill()
    # Mid-run: some proposals committed, the rest not made (the held row was rolled back, not committed).
    assert at_kill == BLOCK_AT, f"killed after {at_kill} proposals, not at the held one"
    with tenant_scope(tenant_a):
        assert set(RetentionProposal.objects.values_list("study_id", flat=True)) == {
            s.pk for s in candidates[:BLOCK_AT]
        }

    # A new worker: Redis redelivers the killed run (acks late), and the daily job runs once more besides.
    worker.start()
    wait_for(lambda: len(FINISHED.findall(worker.output(-1))) >= 1, what="the redelivered run", worker=worker)
    tenant_retention_proposals_make_task.apply_async(kwargs={"tenant_id": tenant_a.pk})
    wait_for(lambda: len(FINISHED.findall(worker.output(-1))) >= 2, what="the second run", worker=worker)
    time.sleep(2)  # a duplicate still in the queue would arrive now
    worker.stop()
    assert len(FINISHED.findall(worker.output(-1))) == 2

    with tenant_scope(tenant_a):
        made = Counter(RetentionProposal.objects.values_list("study_id", flat=True))
        assert made == {s.pk: 1 for s in old}, made  # none twice, none missing, not the held nor the recent one
        proposed = AuditEvent.objects.filter(event_type=EventType.RETENTION_PROPOSED)
        assert proposed.count() == OLD
        assert per_study(proposed, old) == {s.study_instance_uid: 1 for s in old}

        for proposal in RetentionProposal.objects.order_by("pk"):
            retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        assert not Study.objects.filter(pk__in=[s.pk for s in old]).exists()
        assert Study.objects.filter(pk=held.pk).exists()
        assert Study.objects.filter(pk=recent.pk).exists()
        tombstones = Counter(RetentionTombstone.objects.values_list("study_instance_uid", flat=True))
        assert tombstones == {s.study_instance_uid: 1 for s in old}
        deleted = AuditEvent.objects.filter(event_type=EventType.STUDY_DELETED)
        assert deleted.count() == OLD
        assert set(deleted.values_list("event_id", flat=True)) == {"110105"}  # DICOM Study Deleted (H3)
        assert per_study(deleted, old) == {s.study_instance_uid: 1 for s in old}
        assert held.study_instance_uid not in "".join(str(e.participants) for e in deleted)


RECEIVED = re.compile(r"Task studies\.tasks\.tenant_retention_proposals_make\[([^\]]+)\] received")
HARD_LIMIT = re.compile(
    r"Hard time limit \(\d+(?:\.\d+)?s\) exceeded for studies\.tasks\.tenant_retention_proposals_make"
)


def test_a_run_killed_at_its_hard_time_limit_is_acknowledged_not_redelivered_and_the_next_run_completes_it(
    restartable_celery_worker: RestartableWorker, tenant_a: Tenant, admin_a: User
) -> None:
    """H2, checked on a real worker rather than assumed: a task that outlives its hard time limit has its pool
    child killed, and (acks_late with Celery's default task_acks_on_failure_or_timeout) its message is
    acknowledged, so Redis does NOT give it back after the visibility timeout: it runs once, never twice in
    parallel. What it left undone is done by the next run (the daily job is idempotent): nothing twice."""
    worker = restartable_celery_worker
    celery_app.conf.task_always_eager = True
    try:
        study = stored_study(tenant_a, patient_id="RET-TL", study_date=date(2008, 3, 1))
    finally:
        celery_app.conf.task_always_eager = False
    policy_make(tenant_a, admin_a, years=7)

    worker.start()
    with proposal_held(tenant_a, study):
        tenant_retention_proposals_make_task.apply_async(kwargs={"tenant_id": tenant_a.pk}, soft_time_limit=1,
                                                         time_limit=3)  # fmt: skip
        wait_for(proposal_insert_waiting, what="the run to wait on the held proposal", worker=worker)
        # A run stuck where the soft limit cannot reach it (here: its pool process stopped, so the soft limit's
        # signal stays pending), as a task blocked in C code would be: only the hard limit ends it.
        assert worker.process is not None
        (child,) = pool_children(worker.process.pid)
        os.kill(child, signal.SIGSTOP)
        try:
            wait_for(lambda: HARD_LIMIT.search(worker.output(-1)) is not None, what="the hard time limit",
                     worker=worker, timeout=30)  # fmt: skip
            wait_for(lambda: not Path(f"/proc/{child}").exists() or pid_is_zombie(child), what="the kill",
                     worker=worker, timeout=30)  # fmt: skip
        finally:
            if Path(f"/proc/{child}").exists():
                os.kill(child, signal.SIGCONT)
    assert "SoftTimeLimitExceeded" not in worker.output(-1)  # it was the hard limit that ended it
    # Well past the visibility timeout (the fixture's Redis restores unacknowledged messages every second).
    time.sleep(worker.visibility_timeout + 8)
    assert len(RECEIVED.findall(worker.output(-1))) == 1, worker.output(-1)[-4000:]
    assert proposals(tenant_a) == 0  # the killed run's insert was rolled back with its connection

    tenant_retention_proposals_make_task.apply_async(kwargs={"tenant_id": tenant_a.pk})
    wait_for(lambda: FINISHED.search(worker.output(-1)) is not None, what="the next run", worker=worker)
    time.sleep(2)
    worker.stop()
    assert len(RECEIVED.findall(worker.output(-1))) == 2
    with tenant_scope(tenant_a):
        assert list(RetentionProposal.objects.values_list("study_id", flat=True)) == [study.pk]
        assert AuditEvent.objects.filter(event_type=EventType.RETENTION_PROPOSED).count() == 1
