"""Celery tasks of the devices app. Each takes keyword-only primitives and calls one service."""

from __future__ import annotations

import logging

from celery import shared_task

from devices import services
from devices.models import WipeOrder
from portal.web.task_context import task_context
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@shared_task(name="devices.tasks.wipe_orders_overdue")
def wipe_orders_overdue_task() -> int:
    """Fan out: one task per tenant with open wipe orders not yet alerted. Allow-listed for `unscoped_objects`:
    finding which tenants have work is the one cross-tenant read."""
    tenant_ids = sorted(
        set(
            WipeOrder.unscoped_objects.filter(sanitized_at__isnull=True, overdue_alerted_at__isnull=True).values_list(
                "tenant_id", flat=True
            )
        )
    )
    for tenant_id in tenant_ids:
        tenant_wipe_orders_overdue_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="devices.tasks.tenant_wipe_orders_overdue")
def tenant_wipe_orders_overdue_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:wipe-order-check"):
            return services.wipe_orders_overdue_alert()
    except Tenant.DoesNotExist:
        logger.info("tenant %s is gone; no wipe orders to check", tenant_id)
        return 0
