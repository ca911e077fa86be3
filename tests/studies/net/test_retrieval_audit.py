"""Issue 8 #2 and the device policy, through the real listener: a C-GET is recorded before any data set leaves (and
sends nothing if it cannot be recorded); 24 parallel C-GETs are 24 events for 24 deliveries; a device revoked
while its association is open is refused at its next C-STORE, on the trail and as an alert."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import DatabaseError
from django.test import override_settings
from pydicom import dcmread
from pynetdicom.sop_class import CTImageStorage

from audit import services as audit_services
from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from devices.services import device_revoke, device_suspend
from studies.dicom.synthetic import make_study
from studies.models import IngestItem
from studies.net.reactor import PromptAE
from tenants.scoping import tenant_scope
from tests.studies.net.test_qr import Archive, c_get, c_move, events, identifier
from tests.studies.net.test_qr import archive as archive  # the fixture, shared
from tests.studies.net.test_qr import destination as destination  # the fixture, shared


@pytest.fixture
def retrieval_audit_fails(monkeypatch: Any) -> None:
    """The audit insert of a retrieval fails (the database refuses it), in the listener's threads too: the one
    statement that appends an event to its chain (audit.services) raises for these events."""
    append = audit_services._append_sent

    def failing_append(row: AuditEvent, statement: str, params: list[Any]) -> Any:
        if row.event_type in (EventType.INSTANCES_RETRIEVED, EventType.INSTANCES_MOVED):
            raise DatabaseError("audit insert refused (test)")
        return append(row, statement, params)

    monkeypatch.setattr(audit_services, "_append_sent", failing_append)


def test_a_cget_whose_audit_cannot_be_written_sends_nothing(archive: Archive, north: Any, retrieval_audit_fails):
    study_uid = archive.uid(archive.north_ct, "StudyInstanceUID")

    result = c_get(archive.port, identifier("STUDY", StudyInstanceUID=study_uid))

    assert result.received == []
    assert result.final.Status == 0xA702
    assert "could not be recorded" in result.final.ErrorComment
    assert events(north, EventType.INSTANCES_RETRIEVED) == []


def test_a_cmove_whose_audit_cannot_be_written_sends_nothing(
    archive: Archive, north: Any, destination: Any, retrieval_audit_fails
):
    _server, received = destination
    study_uid = archive.uid(archive.north_ct, "StudyInstanceUID")

    statuses = c_move(archive.port, identifier("STUDY", StudyInstanceUID=study_uid), "DEST_WS")

    assert received == []
    assert statuses[-1].Status == 0xA702
    assert events(north, EventType.INSTANCES_MOVED) == []


def test_24_parallel_cgets_are_24_events_for_24_deliveries(archive: Archive, north: Any):
    study_uid = archive.uid(archive.north_mr, "StudyInstanceUID")

    def one(_: int) -> Any:
        return c_get(archive.port, identifier("STUDY", StudyInstanceUID=study_uid))

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(24)))

    delivered = [r for r in results if len(r.received) == 1 and r.final.Status == 0x0000]
    assert len(delivered) == 24
    recorded = events(north, EventType.INSTANCES_RETRIEVED)
    assert len(recorded) == 24
    assert all(e.extra["count"] == 1 and e.outcome == Outcome.SUCCESS for e in recorded)


@pytest.mark.parametrize("withdraw", [device_revoke, device_suspend], ids=["revoked", "suspended"])
@override_settings(DICOM_DEVICE_RECHECK_SECONDS=0)
def test_a_device_revoked_mid_association_is_refused_at_its_next_cstore(
    listener: Any, north: Any, demo_ct: Any, make_member: Any, withdraw: Any
):
    """Issue 7 and issue 11: with no recheck window the device policy is asked on every C-STORE, so a modality
    revoked or suspended while its association is open is refused at its next object."""
    from tenants.models import Role

    admin = make_member(north, Role.TENANT_ADMIN, "admin_revoker")
    first, second = (
        dcmread(io.BytesIO(b))
        for b in make_study(series=1, instances_per_series=2, patient_id="REV1", patient_name="REVOKED^CASE")
    )
    ae = PromptAE(ae_title="DEMO_CT")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NORTH")
    assert assoc.is_established
    try:
        before = assoc.send_c_store(first)
        with tenant_scope(north):
            withdraw(actor=admin, device=demo_ct, reason="taken out of service from the CT room")
        after = assoc.send_c_store(second)
    finally:
        assoc.release()

    assert before.Status == 0x0000
    assert after.Status == 0x0124
    with tenant_scope(north):
        assert IngestItem.objects.count() == 1  # the second object never entered quarantine
        [refused] = AuditEvent.objects.filter(event_type=EventType.INGEST_REJECTED)
        alert = SecurityAlert.objects.get(event=refused)
    assert refused.system_principal == "dicom:DEMO_CT"
    assert (refused.extra["source"], refused.extra["failure"]) == ("cstore", "device")
    assert alert.kind == "revoked_device"


@override_settings(DICOM_DEVICE_RECHECK_SECONDS=60)
def test_a_device_revoked_mid_association_is_refused_within_the_recheck_bound(
    listener: Any, north: Any, demo_ct: Any, make_member: Any, monkeypatch: Any
):
    """Issue 10: the device policy is decided once per DICOM_DEVICE_RECHECK_SECONDS of an association, not per
    object; a device revoked meanwhile is refused at its first object after that bound (and at every one after)."""
    import time

    from studies.net import scp
    from tenants import access
    from tenants.models import Role

    asked: list[str] = []
    device_may = access.device_may

    def counted(device: Any, action: str) -> bool:
        asked.append(action)
        return device_may(device, action)

    monkeypatch.setattr(access, "device_may", counted)
    skipped = [0.0]
    monkeypatch.setattr(scp, "_device_clock", lambda: time.monotonic() + skipped[0])
    admin = make_member(north, Role.TENANT_ADMIN, "admin_revoker")
    objects = [
        dcmread(io.BytesIO(b))
        for b in make_study(series=1, instances_per_series=5, patient_id="REV2", patient_name="REVOKED^LATER")
    ]
    ae = PromptAE(ae_title="DEMO_CT")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NORTH")
    assert assoc.is_established
    try:
        first = [assoc.send_c_store(ds).Status for ds in objects[:3]]
        asked_in_window = len(asked)
        with tenant_scope(north):
            device_revoke(actor=admin, device=demo_ct, reason="taken out of service")
        skipped[0] = 61.0  # the listener's clock moved past the bound
        later = [assoc.send_c_store(ds).Status for ds in objects[3:]]
    finally:
        assoc.release()

    assert first == [0x0000, 0x0000, 0x0000]
    assert asked_in_window == 1  # asked once for the three objects of the window
    assert later == [0x0124, 0x0124]  # refused after the bound, and a refusal is not remembered as a yes
    with tenant_scope(north):
        assert IngestItem.objects.count() == 3
        refused = AuditEvent.objects.filter(event_type=EventType.INGEST_REJECTED)
        assert refused.count() == 2
        assert {SecurityAlert.objects.get(event=r).kind for r in refused} == {"revoked_device"}
