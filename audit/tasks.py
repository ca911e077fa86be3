"""Celery jobs of the audit app."""

from __future__ import annotations

import logging

from celery import shared_task

from audit import signing
from audit.events import EventType, Outcome
from audit.incidents import incident_reminders_send
from audit.models import AuditChain, AuditEvent, ChangeSeal, SecurityAlert
from audit.rules import security_rules_evaluate
from audit.selectors import audit_chain_verify, audit_changes_verify, audit_digests_verify
from audit.services import (
    audit_changes_seal_all,
    audit_digests_sign,
    audit_event_record,
    audit_partitions_ensure,
    audit_syslog_forward,
    audit_worm_anchor,
    audit_worm_verify,
    security_alert_raise,
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


@shared_task(name="audit.tasks.incident_reminders")
def incident_reminders_task(*, tenant_id: int) -> int:
    """Mail the reminders of one tenant's incident deadlines that are due (each once)."""
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:incident-reminders") as tenant:
            return incident_reminders_send(tenant=tenant)
    except Tenant.DoesNotExist:
        logger.info("incident reminders: tenant %s is gone", tenant_id)
        return 0


@shared_task(name="audit.tasks.incident_reminders_all")
def incident_reminders_all_task() -> int:
    """Fan-out: one reminder run per tenant, each in its own task and scope."""
    tenant_ids = tenant_ids_all()
    for tenant_id in tenant_ids:
        incident_reminders_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="audit.tasks.audit_digests_sign")
def audit_digests_sign_task() -> int:
    """Platform job: sign every chain's head for today."""
    return audit_digests_sign()


@shared_task(name="audit.tasks.audit_worm_anchor")
def audit_worm_anchor_task() -> int:
    """Platform job: write the new signed digests and the closed months of events to the WORM store, then check
    every copy there (off when AUDIT_WORM_STORE is empty)."""
    written = len(audit_worm_anchor())
    audit_worm_verify()
    return written


@shared_task(name="audit.tasks.audit_partitions_ensure")
def audit_partitions_ensure_task() -> list[str]:
    """Platform job: make the audit events' monthly partitions of this month and the months ahead (idempotent)."""
    return audit_partitions_ensure()


@shared_task(name="audit.tasks.audit_syslog_forward")
def audit_syslog_forward_task() -> int:
    """Platform job: forward the events not yet sent to the configured syslog receiver."""
    return audit_syslog_forward()


@shared_task(name="audit.tasks.audit_verify_tenant")
def audit_verify_tenant_task(*, tenant_id: int) -> bool:
    """Verify one tenant's trail; True when whole (a failure raises a critical SecurityAlert)."""
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:audit-verify") as tenant:
            return audit_verification_run(tenant=tenant).outcome == 0
    except Tenant.DoesNotExist:
        logger.info("audit verification: tenant %s is gone", tenant_id)
        return True


@shared_task(name="audit.tasks.audit_verify_all")
def audit_verify_all_task() -> int:
    """Fan-out: one verification per tenant."""
    tenant_ids = tenant_ids_all()
    for tenant_id in tenant_ids:
        audit_verify_tenant_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


def audit_verification_run(*, tenant: Tenant) -> AuditEvent:
    """Verify the tenant's trail (its event chain, the seals over its django-auditlog entries, and their signed
    digests when a key is set) and record the result as AUDIT_VERIFIED in its chain; any failure also raises a
    critical SecurityAlert naming what failed. System job inside the tenant's scope. Returns the event."""
    problems: list[str] = []
    chain = AuditChain.objects.filter(key=AuditChain.key_for(tenant)).first()
    if chain is not None:
        result = audit_chain_verify(chain=chain)
        if not result.ok:
            problems.append(f"events: broken at sequence {result.first_broken_sequence} ({result.reason})")
    changes = audit_changes_verify(tenant_id=tenant.pk)
    if not changes.ok:
        problems.append(f"changes: broken at sequence {changes.first_broken_sequence} ({changes.reason})")
    digests_checked = signing.verify_key() is not None
    if digests_checked:
        for key in (AuditChain.key_for(tenant), ChangeSeal.chain_key(tenant.pk)):
            digest_chain = AuditChain.objects.filter(key=key).first()
            if digest_chain is not None:
                problems += [f"{key}: {problem}" for problem in audit_digests_verify(chain=digest_chain)]
    extra = {"problems": problems, "events": chain.last_sequence if chain else 0, "changes": changes.events,
             "digests_checked": digests_checked}  # fmt: skip
    if not problems:
        return audit_event_record(event=EventType.AUDIT_VERIFIED, tenant=tenant, extra=extra)
    alert = security_alert_raise(
        kind="audit_verification_failed", summary="Audit trail verification failed: " + "; ".join(problems),
        event=EventType.AUDIT_VERIFIED, severity=SecurityAlert.Severity.CRITICAL, tenant=tenant,
        outcome=Outcome.MAJOR_FAILURE, extra=extra,
    )  # fmt: skip
    return alert.event
