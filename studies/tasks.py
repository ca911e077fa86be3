"""Celery tasks of the archive. Each takes keyword-only primitives, enters the tenant's task context and calls
one service; a row that is gone is logged and skipped."""

from __future__ import annotations

import logging

from celery import shared_task

from studies import services
from studies.models import IngestItem, Series
from studies.scanning import ScanError
from tenants.models import Tenant
from tenants.scoping import task_context

logger = logging.getLogger(__name__)


@shared_task(
    name="studies.tasks.ingest_process",
    autoretry_for=(ScanError,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=10,
)
def ingest_process_task(*, tenant_id: int, item_id: int) -> str:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:ingest"):
            item = services.ingest_process(item_id=item_id)
    except Tenant.DoesNotExist:
        logger.info("tenant %s is gone; ingest item %s skipped", tenant_id, item_id)
        return "gone"
    except IngestItem.DoesNotExist:
        logger.info("ingest item %s is gone", item_id)
        return "gone"
    return item.state if item is not None else "taken"


@shared_task(name="studies.tasks.series_thumbnail")
def series_thumbnail_task(*, tenant_id: int, series_id: int) -> bool:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:thumbnails"):
            series = services.series_thumbnail_make(series=Series.objects.get(pk=series_id))
            return series.thumbnail_id is not None
    except (Tenant.DoesNotExist, Series.DoesNotExist):
        logger.info("series %s of tenant %s is gone; no thumbnail", series_id, tenant_id)
        return False


@shared_task(name="studies.tasks.ingest_sweep")
def ingest_sweep_task() -> int:
    """Fan out: one requeue task per tenant with items stuck in `received` or `processing`. Allow-listed for
    `unscoped_objects`: finding which tenants have stuck work is the one cross-tenant read."""
    tenant_ids = sorted(
        set(
            IngestItem.unscoped_objects.filter(
                state__in=[IngestItem.State.RECEIVED, IngestItem.State.PROCESSING]
            ).values_list("tenant_id", flat=True)
        )
    )
    for tenant_id in tenant_ids:
        tenant_ingest_requeue_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_ingest_requeue")
def tenant_ingest_requeue_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:ingest-sweeper"):
            return services.ingest_requeue_stale()
    except Tenant.DoesNotExist:
        return 0
