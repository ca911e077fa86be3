"""Celery tasks of the training app. Each takes keyword-only primitives and calls one service.

Mail: the reminders call django's `send_mail` inside this task for now; when the tenants mail task lands
(helper h5's branch: mail sent by a Celery task on commit), the service should queue that task instead.
"""

from __future__ import annotations

import logging

from celery import shared_task

from portal.web.task_context import task_context
from tenants.models import Tenant
from training import services

logger = logging.getLogger(__name__)


@shared_task(name="training.tasks.training_reminders")
def training_reminders_task() -> int:
    """Fan out, once a day: one reminder task per active tenant (Tenant is not tenant data, so no bypass)."""
    tenant_ids = list(Tenant.objects.filter(status=Tenant.Status.ACTIVE).values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        training_reminders_send_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="training.tasks.training_reminders_send")
def training_reminders_send_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:training-reminders"):
            sent = services.training_reminders_send()
            services.training_digest_send()
            return sent
    except Tenant.DoesNotExist:
        logger.info("tenant %s is gone; no training reminders", tenant_id)
        return 0
