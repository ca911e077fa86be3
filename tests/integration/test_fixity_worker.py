"""The fixity beat job, run by a real Celery worker process through Redis (issue 13): a byte flipped in a primary
blob is found, alerted and repaired by the worker, on the folders this test process shares with it."""

from __future__ import annotations

import os

import pytest

from audit.models import SecurityAlert
from studies.models import Blob
from studies.storage.blobs import (
    PRIMARY,
    blob_data_key,
    blob_sealed_check,
    blob_sealed_put,
    blob_sealed_read,
    blob_write,
)
from studies.tasks import blob_fixity_check_all_task
from tenants.scoping import tenant_scope
from tests.integration.test_membership_expiry_worker import _wait_for

pytestmark = pytest.mark.integration


def test_the_fixity_beat_job_repairs_a_flipped_byte_through_a_real_worker(celery_worker_process, tenant_a, tenant_b):
    with tenant_scope(tenant_a):
        blob = blob_write(kind=Blob.Kind.INSTANCE, data=os.urandom(4000))
        sealed = bytearray(blob_sealed_read(store=PRIMARY, name=blob.storage_name))
        sealed[50] ^= 0x80
        blob_sealed_put(store=PRIMARY, name=blob.storage_name, sealed=bytes(sealed))

    result = blob_fixity_check_all_task.apply_async()

    assert result.get(timeout=60, disable_sync_subtasks=False) >= 2  # one check queued per tenant

    def raised():
        with tenant_scope(tenant_a):
            return SecurityAlert.objects.filter(kind="blob_fixity", subject=str(blob.public_id)).exists()

    _wait_for(raised, what="the fixity alert", worker=celery_worker_process)
    with tenant_scope(tenant_a):
        alert = SecurityAlert.objects.get(kind="blob_fixity")
        assert alert.event.system_principal == "enclave:fixity"
        repaired = blob_sealed_read(store=PRIMARY, name=blob.storage_name)
        assert blob_sealed_check(blob=blob, sealed=repaired, data_key=blob_data_key(blob=blob))
    with tenant_scope(tenant_b):
        assert not SecurityAlert.objects.exists()
