"""Celery jobs of the audit app."""

from __future__ import annotations

import logging

from celery import shared_task

from audit.services import (
    audit_changes_seal_all,
    audit_digests_sign,
    audit_syslog_forward,
    security_rules_evaluate,
)
from portal.web.task_context import task_context
from tenants.models import Tenant

logger = logging.getLogger(__name__)


def tenant_ids_all() -> list[int]:
    return list(Tenant.objects.order_by("pk").values_list("pk", flat=True))


@shared_task(name="audit.tasks.audit_changes_seal_all")
def audit_changes_seal_all_task() -> int:
    """Platform job (every tenant, no scope needed: LogEntry and the seals are not tenant-scoped models)."""
    return audit_changes_seal_all()


@shared_task(name="audit.tasks.security_rules_evaluate")
def security_rules_evaluate_task(*, tenant_id: int) -> int:
    """Evaluate the security rules over one tenant's recent events; the number of alerts raised."""
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:security-rules") as tenant:
            return len(security_rules_evaluate(tenant=tenant))
    except Tenant.DoesNotExist:
        logger.info("security rules: tenant %s is gone", tenant_id)
        return 0


@shared_task(name="audit.tasks.security_rules_evaluate_all")
def security_rules_evaluate_all_task() -> int:
    """Fan-out: one evaluation per tenant, each in its own task and scope."""
    tenant_ids = tenant_ids_all()
    for tenant_id in tenant_ids:
        security_rules_evaluate_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="audit.tasks.audit_digests_sign")
def audit_digests_sign_task() -> int:
    """Platform job: sign every chain's head for today."""
    return audit_digests_sign()


@shared_task(name="audit.tasks.audit_syslog_forward")
def audit_syslog_forward_task() -> int:
    """Platform job: forward the events not yet sent to the configured syslog receiver."""
    return audit_syslog_forward()
