"""The periodic membership-expiry job, run by a real Celery worker process through Redis."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from audit.events import EventType
from audit.models import AuditEvent
from tenants import services
from tenants.models import ApiToken, Membership, Role
from tenants.scoping import tenant_scope
from tenants.tasks import memberships_end_due_task

pytestmark = pytest.mark.integration


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition", worker=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if worker is not None and worker.process.poll() is not None:
            pytest.fail(f"the worker exited early:\n{worker.output()}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; worker log:\n{worker.output() if worker else ''}")


def test_expired_membership_is_ended_with_its_sessions_and_tokens_by_a_real_worker(
    celery_worker_process, tenant_a, tenant_b, make_member
):
    leaver = make_member(tenant_a, Role.AUDITOR, "north-leaver", ends_in_days=10)
    stays = make_member(tenant_a, Role.RADIOLOGIST, "north-stays")
    other_tenant = make_member(tenant_b, Role.AUDITOR, "south-auditor", ends_in_days=10)
    with tenant_scope(tenant_a):
        services.api_token_create(actor=leaver, tenant=tenant_a, name="script")
        # The end date has passed since (the services refuse to set a past one, so move it directly).
        Membership.objects.filter(user=leaver).update(ends_at=timezone.now() - timedelta(minutes=1))
    browser = Client()
    browser.force_login(leaver)
    services.session_register(user=leaver, session_key=browser.session.session_key)

    result = memberships_end_due_task.apply_async()

    with tenant_scope(tenant_a):
        _wait_for(
            lambda: Membership.objects.get(user=leaver).status == Membership.Status.ENDED,
            what="the membership to end",
            worker=celery_worker_process,
        )
        # disable_sync_subtasks: an eager task earlier in this test process may have left Celery believing it runs
        # inside a task, where a blocking get() is refused.
        assert result.get(timeout=30, disable_sync_subtasks=False) == 1  # one tenant had work: one task queued
        leaver.refresh_from_db()
        assert leaver.is_active is False
        assert ApiToken.objects.get(user=leaver).revoked_at is not None
        assert not Session.objects.filter(session_key=browser.session.session_key).exists()
        assert Membership.objects.get(user=stays).status == Membership.Status.ACTIVE
        event = AuditEvent.objects.get(event_type=EventType.MEMBERSHIP_ENDED)
        assert event.system_principal == "enclave:membership-expiry"
        assert event.extra["tokens_revoked"] == 1
        assert event.extra["sessions_ended"] == 1
    with tenant_scope(tenant_b):
        assert Membership.objects.get(user=other_tenant).status == Membership.Status.ACTIVE
    assert "tenants.tasks.tenant_memberships_end_due" in celery_worker_process.output()
