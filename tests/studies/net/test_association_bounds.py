"""The bounds of one DICOM association (issue 14), against the real listener: the number of objects, the size of
an object while it is being received, and the length of each PDU. Over a bound: a failure status with its reason,
or the association aborted before the object is whole; never a half-written object."""

from __future__ import annotations

from django.test import override_settings
from pynetdicom.dimse import DIMSEServiceProvider

from audit.events import EventType
from audit.models import AuditEvent
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from studies.net.scp import STATUS_OUT_OF_RESOURCES
from tenants.scoping import tenant_scope
from tests.studies.net.scu import associate, echo, write_files


def refusals(tenant) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.INGEST_REJECTED).order_by("sequence"))


def test_objects_past_the_associations_limit_are_refused_with_the_reason_once_recorded(
    listener, north, demo_ct, tmp_path
):
    paths = write_files(tmp_path, [make_instance(patient_id=f"B{i}") for i in range(4)])
    with override_settings(DICOM_MAX_INSTANCES_PER_ASSOCIATION=2):
        result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=paths)

    assert result.statuses == [0x0000, 0x0000, STATUS_OUT_OF_RESOURCES, STATUS_OUT_OF_RESOURCES]
    assert "open another" in result.comments[2]
    with tenant_scope(north):
        assert IngestItem.objects.count() == 2
    [refusal] = refusals(north)
    assert refusal.extra["door"] == {"instances": 3}
    # A new association may send again.
    with override_settings(DICOM_MAX_INSTANCES_PER_ASSOCIATION=2):
        again = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=paths[2:3])
    assert again.statuses == [0x0000]


def test_an_object_past_the_message_limit_aborts_the_association_and_nothing_is_written(
    listener, north, demo_ct, tmp_path
):
    [path] = write_files(tmp_path, [make_instance(rows=64, columns=64)])  # about 8 KiB of pixels
    with override_settings(DICOM_MAX_MESSAGE_BYTES=4096):
        result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [-1]  # no C-STORE response: the association was aborted
    with tenant_scope(north):
        assert not IngestItem.objects.exists()
    [refusal] = refusals(north)
    assert "over the limit of 4096 bytes" in refusal.outcome_description
    assert refusal.extra["door"] == {"aborted": True}
    assert echo(port=listener.port, calling="DEMO_CT", called="NORTH") == 0x0000  # the listener goes on


def test_a_pdu_longer_than_the_offered_maximum_aborts_the_association(listener, north, demo_ct, tmp_path, monkeypatch):
    # A sender that ignores the maximum PDU length we offered (1 MiB) and sends a 2 MiB object in one PDU.
    monkeypatch.setattr(DIMSEServiceProvider, "maximum_pdu_size", property(lambda self: 4 * 1024 * 1024))
    [path] = write_files(tmp_path, [make_instance(rows=1024, columns=1024)])

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [-1]
    with tenant_scope(north):
        assert not IngestItem.objects.exists()
    [refusal] = refusals(north)
    assert "over the negotiated maximum" in refusal.outcome_description
