"""Celery tasks of the tenants app. Each takes keyword-only primitives and calls one service."""

from __future__ import annotations

import logging
from smtplib import SMTPException

from celery import shared_task
from django.utils import timezone

from portal.web.task_context import task_context
from tenants import services
from tenants.models import Membership, Tenant

logger = logging.getLogger(__name__)


@shared_task(name="tenants.tasks.memberships_end_due")
def memberships_end_due_task() -> int:
    """Fan out: one task per tenant that has memberships past their end date. Allow-listed for
    `unscoped_objects`, because finding which tenants have work is the one cross-tenant read."""
    tenant_ids = sorted(
        set(
            Membership.unscoped_objects.filter(
                status=Membership.Status.ACTIVE, ends_at__lte=timezone.now()
            ).values_list("tenant_id", flat=True)
        )
    )
    for tenant_id in tenant_ids:
        tenant_memberships_end_due_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="tenants.tasks.tenant_memberships_end_due")
def tenant_memberships_end_due_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:membership-expiry"):
            return services.memberships_end_due()
    except Tenant.DoesNotExist:
        logger.info("tenant %s is gone; nothing to end", tenant_id)
        return 0


@shared_task(name="tenants.tasks.recertification_all")
def recertification_all_task() -> int:
    """Fan out: the access recertification step of every tenant (open, remind, close), one task each."""
    tenant_ids = list(Tenant.objects.order_by("pk").values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        tenant_recertification_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="tenants.tasks.tenant_recertification")
def tenant_recertification_task(*, tenant_id: int) -> dict[str, int]:
    """One tenant's recertification: close a campaign past its deadline, remind, open the next one when due."""
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:recertification") as tenant:
            ended = services.recertification_close_due(tenant=tenant)
            reminded = services.recertification_remind(tenant=tenant)
            opened = services.recertification_open(tenant=tenant) is not None
            return {"ended": ended, "reminded": reminded, "opened": int(opened)}
    except Tenant.DoesNotExist:
        logger.info("tenant %s is gone; nothing to recertify", tenant_id)
        return {"ended": 0, "reminded": 0, "opened": 0}


@shared_task(
    name="tenants.tasks.mail_send",
    autoretry_for=(SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=3600,
    retry_jitter=True,
    max_retries=8,
)
def mail_send_task(*, mail_id: int) -> bool:
    """Deliver one e-mail of the outbox (`tenants.services.mail_queue`). A mail server that is down or refuses is
    retried with backoff (30 s doubling to an hour, 8 times); the request that queued it answered long ago, and
    after the last retry the outbox sweep takes over."""
    return services.mail_deliver(mail_id=mail_id)


@shared_task(name="tenants.tasks.mail_outbox_sweep")
def mail_outbox_sweep_task() -> int:
    """Queue again the outbox's messages that were not delivered in time (a broker that was down, a task that
    gave up)."""
    return services.mail_outbox_sweep()
