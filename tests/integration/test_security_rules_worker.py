"""The security-rules beat job, run by a real Celery worker process through Redis (issue 12)."""

from __future__ import annotations

import pytest

from audit.events import EventType
from audit.models import SecurityAlert
from audit.tasks import security_rules_evaluate_all_task
from tenants.scoping import tenant_scope
from tests.audit.helpers import record
from tests.integration.test_membership_expiry_worker import _wait_for

pytestmark = pytest.mark.integration


def test_the_beat_job_raises_the_rule_alerts_through_a_real_worker(celery_worker_process, tenant_a, tenant_b):
    for _ in range(6):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username="mallory", outcome=4)
    record(tenant_b, EventType.LOGIN_FAILED, actor_username="mallory", outcome=4)  # under the threshold

    result = security_rules_evaluate_all_task.apply_async()

    assert result.get(timeout=60, disable_sync_subtasks=False) == 2  # one evaluation queued per tenant

    def raised():
        with tenant_scope(tenant_a):
            return SecurityAlert.objects.filter(kind="repeated_failed_logins", subject="mallory").count() == 1

    _wait_for(raised, what="the alert", worker=celery_worker_process)
    with tenant_scope(tenant_a):
        alert = SecurityAlert.objects.get(kind="repeated_failed_logins")
        assert len(alert.evidence) == 6
        assert alert.event.system_principal == "enclave:security-rules"
    with tenant_scope(tenant_b):
        assert not SecurityAlert.objects.exists()
