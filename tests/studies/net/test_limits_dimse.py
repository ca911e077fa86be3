"""RATE_LIMITS and the ingestion quota on the DICOM listener (issue 14), against the real listener: a C-FIND past
its limit answers 0xA700, a C-GET 0xA701 and sends nothing; a C-STORE past the tenant's quota answers 0xA700 with
the reason and is recorded through the ingest refusal service. Per day, so that no window ends within a test."""

from __future__ import annotations

from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.studies.net.scu import associate, write_files
from tests.studies.net.test_qr import GetResult, c_find, c_get, identifier


def rate_events(tenant) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.RATE_LIMITED).order_by("sequence"))


def test_c_find_past_the_devices_limit_answers_out_of_resources(listener, north, demo_ct):
    with override_settings(RATE_LIMITS={"search": {"device": "1/day"}}):
        first = c_find(listener.port, identifier("STUDY", PatientID="", StudyInstanceUID=""))
        second = c_find(listener.port, identifier("STUDY", PatientID="", StudyInstanceUID=""))
        third = c_find(listener.port, identifier("STUDY", PatientID="", StudyInstanceUID=""))
    assert first.statuses == [0x0000]
    assert second.statuses == third.statuses == [0xA700]
    [event] = rate_events(north)
    assert event.extra == {"action": "search", "kind": "device", "limit": "1/day", "door": "DICOM listener"}
    assert event.system_principal == "dicom:DEMO_CT"
    assert event.source_address == "127.0.0.1"


def test_c_get_past_the_devices_limit_answers_out_of_resources_and_sends_nothing(listener, north, demo_ct):
    with override_settings(RATE_LIMITS={"retrieve": {"device": "1/day"}}):
        first = c_get(listener.port, identifier("STUDY", StudyInstanceUID="1.2.3.4"))
        second: GetResult = c_get(listener.port, identifier("STUDY", StudyInstanceUID="1.2.3.4"))
    assert first.final.Status == 0x0000
    assert second.final.Status == 0xA701
    assert "Too many retrieve requests" in second.final.ErrorComment
    assert second.received == []
    assert len(rate_events(north)) == 1


def test_c_store_past_the_tenants_quota_answers_out_of_resources_with_the_reason(listener, north, demo_ct, tmp_path):
    blobs = [make_instance(patient_id=f"Q{i}") for i in range(3)]
    paths = write_files(tmp_path, blobs)
    Tenant.objects.filter(pk=north.pk).update(ingest_quota_bytes_per_day=len(blobs[0]) * 5 // 2)  # two fit

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=paths)

    assert result.statuses == [0x0000, 0x0000, 0xA700]
    assert "ingestion quota" in result.comments[2]
    with tenant_scope(north):
        assert IngestItem.objects.filter(state=IngestItem.State.STORED).count() == 2
        refused = AuditEvent.objects.get(event_type=EventType.INGEST_REJECTED)
    assert refused.extra["failure"] == IngestItem.Failure.QUOTA
    assert "ingestion quota" in refused.outcome_description


def test_the_platform_quota_applies_when_the_tenant_sets_none(listener, north, demo_ct, tmp_path):
    [path] = write_files(tmp_path, [make_instance()])
    with override_settings(INGEST_QUOTA_BYTES_PER_HOUR=100):
        result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])
    assert result.statuses == [0xA700]
    assert "per hour" in result.comments[0]
    with tenant_scope(north):
        assert not IngestItem.objects.exists()
