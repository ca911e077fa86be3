"""The per-tenant ingestion quota (issue 14) on the HTTP doors: STOW-RS answers the refused instance as a failed
item with the reason, the browser upload shows it as a refused item; both on the audit trail as refusals. (C-STORE:
tests/studies/net/test_limits_dimse.py; the quota itself: tests/tenants/commands/test_tenant_quota.py.)"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import comment, failed, post_parts, referenced
from tests.tenants.helpers import events

pytestmark = pytest.mark.django_db(transaction=True)


def quota(tenant: Tenant, per_hour: int) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(ingest_quota_bytes_per_hour=per_hour)


def test_stow_rs_past_the_quota_fails_the_instance_with_the_reason(api_client_for, tenant_a, radiologist_a):
    first, second = make_instance(patient_id="Q1"), make_instance(patient_id="Q2")
    quota(tenant_a, len(first) + len(second) // 2)

    response = post_parts(api_client_for(radiologist_a, tenant_a), "/dicomweb/north/studies", [first, second])

    assert response.status_code in (200, 202), response.content
    body = response.json()
    assert len(referenced(body)) == 1
    [refused] = failed(body)
    assert "ingestion quota" in comment(refused)
    with tenant_scope(tenant_a):
        assert IngestItem.objects.count() == 1
    assert any("ingestion quota" in e.outcome_description for e in events(tenant_a, EventType.INGEST_REJECTED))


def test_the_upload_past_the_quota_is_a_refused_item_with_the_reason(client_for, tenant_a, technologist_a):
    data = make_instance()
    quota(tenant_a, len(data) // 2)

    response = client_for(technologist_a).post(
        "/t/north/upload/files/",
        {"batch": "3f1d2a52-8f4e-4a44-9b64-5b1c8f3f7c11", "file": SimpleUploadedFile("one.dcm", data)},
    )

    assert response.status_code == 201, response.content
    [item] = response.json()["items"]
    assert item["state"] == "rejected"
    assert "ingestion quota" in item["reason"]
    with tenant_scope(tenant_a):
        assert IngestItem.objects.get().failure == IngestItem.Failure.QUOTA
