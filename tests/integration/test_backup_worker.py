"""The scheduled backup and restore drill, run by a real Celery worker process through Redis (issue 13)."""

from __future__ import annotations

from datetime import date

import pytest

from audit.events import EventType
from audit.models import AuditEvent
from portal.celery_schedule import BEAT_SCHEDULE
from studies.models import RestoreDrill
from studies.storage.backups import backup_get, backup_list, backup_store
from studies.tasks import database_backup_task, restore_drill_task
from tests.studies.retention_fixtures import stored_study

pytestmark = pytest.mark.integration


@pytest.fixture
def study_a(transactional_db, tenant_a):
    """Stored with eager Celery, before the worker fixture turns eager mode off (argument order)."""
    return stored_study(tenant_a, patient_id="WK-BACKUP", study_date=date(2024, 1, 2))


def test_the_beat_jobs_back_up_and_drill_through_a_real_worker(study_a, celery_worker_process, tenant_a):
    for manifest in backup_list():  # the replica store lives as long as the test process
        backup_store().delete(manifest.manifest_path)
        backup_store().delete(manifest.dump_path)
    assert BEAT_SCHEDULE["database-backup"]["task"] == database_backup_task.name
    assert BEAT_SCHEDULE["restore-drill"]["task"] == restore_drill_task.name

    name = database_backup_task.apply_async().get(timeout=180)

    manifest = backup_get("latest")
    assert manifest.name == name
    assert manifest.tables["studies_instance"] == 4
    event = AuditEvent.unscoped_objects.get(event_type=EventType.DATABASE_BACKED_UP)
    assert event.system_principal == "enclave:backup"

    assert restore_drill_task.apply_async().get(timeout=300) == RestoreDrill.Status.PASSED
    drill = RestoreDrill.objects.get()
    assert drill.backup_name == name
    assert drill.checks["tenants"][str(tenant_a.pk)]["blobs_sampled"] == 4
