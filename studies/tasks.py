"""Celery tasks of the archive. Each takes keyword-only primitives, enters the tenant's task context and calls
one service; a row that is gone is logged and skipped."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from portal.web.task_context import task_context
from studies import services
from studies.models import BreakGlassGrant, Export, IngestItem, ReadTally, Series
from studies.scanning import ScanError
from studies.services import backups as backup_services
from studies.services import fixity
from studies.services import retention as retention_services
from studies.services.reads import read_tallies_flush
from tenants.jobs import task_queue
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@shared_task(
    name="studies.tasks.ingest_process",
    # The item's own row is the result (state, reason, timestamps); storing Celery's result in the database as
    # well cost a row and several statements per instance.
    ignore_result=True,
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


@shared_task(name="studies.tasks.break_glass_expire")
def break_glass_expire_task() -> int:
    """Fan out: one task per tenant with break-glass grants past their expiry and not yet ended. Allow-listed
    for `unscoped_objects` (this file): finding which tenants have such grants is the one cross-tenant read."""
    tenant_ids = sorted(
        set(
            BreakGlassGrant.unscoped_objects.filter(ended_at__isnull=True, expires_at__lte=timezone.now()).values_list(
                "tenant_id", flat=True
            )
        )
    )
    for tenant_id in tenant_ids:
        tenant_break_glass_expire_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_break_glass_expire")
def tenant_break_glass_expire_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:break-glass-expiry"):
            return services.break_glass_end_expired()
    except Tenant.DoesNotExist:
        return 0


@shared_task(name="studies.tasks.shares_cleanup")
def shares_cleanup_task() -> int:
    """Fan out: one task per active tenant to remove the grants of expired shares (tidiness; expired shares
    already stop working at once)."""
    tenant_ids = list(Tenant.objects.filter(status=Tenant.Status.ACTIVE).values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        tenant_shares_cleanup_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_shares_cleanup")
def tenant_shares_cleanup_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:share-cleanup"):
            return services.shares_expired_cleanup()
    except Tenant.DoesNotExist:
        return 0


@shared_task(name="studies.tasks.export_run", soft_time_limit=3300, time_limit=3600)
def export_run_task(*, tenant_id: int, export_id: int) -> str:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:export"):
            export = services.export_run(export_id=export_id)
    except (Tenant.DoesNotExist, Export.DoesNotExist):
        logger.info("export %s of tenant %s is gone", export_id, tenant_id)
        return "gone"
    return export.state if export is not None else "taken"


@shared_task(name="studies.tasks.read_tallies_flush")
def read_tallies_flush_task() -> int:
    """Fan out: one flush per tenant with open read-folding windows (studies.services.reads). Allow-listed for
    `unscoped_objects`: finding which tenants have open windows is the one cross-tenant read."""
    tenant_ids = sorted(set(ReadTally.unscoped_objects.values_list("tenant_id", flat=True)))
    for tenant_id in tenant_ids:
        tenant_read_tallies_flush_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_read_tallies_flush")
def tenant_read_tallies_flush_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:read-audit"):
            return read_tallies_flush()
    except Tenant.DoesNotExist:
        return 0


@shared_task(name="studies.tasks.retention_proposals_make")
def retention_proposals_make_task() -> int:
    """Fan out: one task per active tenant to propose the studies past their retention (daily)."""
    tenant_ids = list(Tenant.objects.filter(status=Tenant.Status.ACTIVE).values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        task_queue("studies.tasks.tenant_retention_proposals_make", tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_retention_proposals_make")
def tenant_retention_proposals_make_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:retention"):
            return retention_services.retention_proposals_make()
    except Tenant.DoesNotExist:
        return 0


# Fixity, replica catch-up and orphans (studies.services.fixity): each fans out over every tenant, suspended ones
# included (their images are kept, so they are checked).


def _every_tenant() -> list[int]:
    return list(Tenant.objects.order_by("pk").values_list("pk", flat=True))


@shared_task(name="studies.tasks.blob_fixity_check_all")
def blob_fixity_check_all_task() -> int:
    tenant_ids = _every_tenant()
    for tenant_id in tenant_ids:
        tenant_blob_fixity_check_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_blob_fixity_check", soft_time_limit=3300, time_limit=3600)
def tenant_blob_fixity_check_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:fixity"):
            return fixity.blob_fixity_check().checked
    except Tenant.DoesNotExist:
        return 0


@shared_task(name="studies.tasks.blob_replicas_catch_up_all")
def blob_replicas_catch_up_all_task() -> int:
    tenant_ids = _every_tenant()
    for tenant_id in tenant_ids:
        tenant_blob_replicas_catch_up_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_blob_replicas_catch_up", soft_time_limit=3300, time_limit=3600)
def tenant_blob_replicas_catch_up_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:replication"):
            return fixity.blob_replicas_catch_up()
    except Tenant.DoesNotExist:
        return 0


@shared_task(name="studies.tasks.blob_orphans_remove_all")
def blob_orphans_remove_all_task() -> int:
    tenant_ids = _every_tenant()
    for tenant_id in tenant_ids:
        tenant_blob_orphans_remove_task.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="studies.tasks.tenant_blob_orphans_remove", soft_time_limit=3300, time_limit=3600)
def tenant_blob_orphans_remove_task(*, tenant_id: int) -> int:
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:orphan-cleanup"):
            return sum(fixity.blob_orphans_remove().values())
    except Tenant.DoesNotExist:
        return 0


# Backups run for hours on a big archive: longer limits than the default, and acknowledged on receipt rather than
# late, since Redis would hand an unacknowledged task to another worker after its visibility timeout (13 min) and
# two backups would run at once. A backup lost with its worker is made by the next day's run (or by hand).
@shared_task(
    name="studies.tasks.database_backup",
    acks_late=False,
    soft_time_limit=settings.BACKUP_TIME_LIMIT_SECONDS,
    time_limit=settings.BACKUP_TIME_LIMIT_SECONDS + 300,
)
def database_backup_task() -> str:
    """Platform job: back the database up to the replica store and prune old backups; the backup's name."""
    return backup_services.database_backup().name


@shared_task(
    name="studies.tasks.restore_drill",
    acks_late=False,
    soft_time_limit=settings.BACKUP_TIME_LIMIT_SECONDS,
    time_limit=settings.BACKUP_TIME_LIMIT_SECONDS + 300,
)
def restore_drill_task() -> str:
    """Platform job: restore the latest backup into a scratch database and check it; the drill's status."""
    return backup_services.restore_drill_run().status
