"""The DICOM listener in this process on a free port, spoken to by pynetdicom's SCU over loopback.

Celery is eager here, so each object is processed in the listener's thread right after its receipt commits: by
the time the SCU has its C-STORE response, the object is stored (or rejected).
"""

from __future__ import annotations

import socket
import time

import pytest
from django.core.files.storage import storages
from django.db import connection
from django.test import override_settings
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless
from pynetdicom.sop_class import Verification

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from devices.models import Device
from devices.services import device_register
from studies.dicom.synthetic import make_instance, make_study
from studies.models import IngestItem, Instance, Series, Study
from studies.net.reactor import PromptAE
from studies.net.scp import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, stop_listener
from studies.selectors import study_list
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.studies.net.conftest import approved_modality
from tests.studies.net.scu import associate, echo, sop_instance_uid, write_files

PATIENT_NAME = "LISTENERTEST^PATIENT"
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


def _rejections(tenant) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.ASSOCIATION_REJECTED))


def test_echo_from_an_approved_modality_succeeds(listener, demo_ct):
    assert echo(port=listener.port, calling="DEMO_CT", called="NORTH") == 0x0000


def test_a_multi_series_study_is_stored_once_encrypted_and_indexed(listener, north, demo_ct, tmp_path):
    blobs = make_study(series=2, instances_per_series=3, patient_id="LST0001", patient_name=PATIENT_NAME)
    files = write_files(tmp_path, blobs)

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=files)

    assert result.established
    assert result.statuses == [0x0000] * 6
    with tenant_scope(north):
        items = list(IngestItem.objects.all())
        assert {i.state for i in items} == {IngestItem.State.STORED}
        assert len(items) == 6
        assert {i.source for i in items} == {IngestItem.Source.CSTORE}
        assert len({i.batch for i in items}) == 1  # one association, one batch
        assert {i.device_id for i in items} == {demo_ct.pk}
        assert {i.source_address for i in items} == {"127.0.0.1"}
        assert {i.sop_instance_uid for i in items} == {sop_instance_uid(b) for b in blobs}
        study = Study.objects.get()
        assert (study.number_of_series, study.number_of_instances) == (2, 6)
        assert study.patient.name == PATIENT_NAME
        assert Series.objects.count() == 2
        instances = list(Instance.objects.select_related("blob"))
        assert len(instances) == 6
        for instance in instances:
            with storages["blobs"].open(instance.blob.storage_name) as raw:
                sealed = raw.read()
            assert b"DICM" not in sealed
            assert PATIENT_NAME.encode() not in sealed
            assert b"LST0001" not in sealed
        stored = AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED)
        assert stored.count() == 6
        assert {e.system_principal for e in stored} == {"dicom:DEMO_CT"}
        assert {e.source_address for e in stored} == {"127.0.0.1"}


def test_the_same_study_sent_again_is_stored_once(listener, north, demo_ct, tmp_path):
    files = write_files(tmp_path, make_study(series=1, instances_per_series=2))

    first = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=files)
    second = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=files)

    assert first.statuses == second.statuses == [0x0000, 0x0000]
    with tenant_scope(north):
        assert Instance.objects.count() == 2
        states = sorted(IngestItem.objects.values_list("state", flat=True))
        assert states == ["duplicate", "duplicate", "stored", "stored"]


def test_a_study_sent_to_north_is_invisible_to_south(listener, north, south, demo_ct, make_member, tmp_path):
    north_reader = make_member(north, Role.RADIOLOGIST, "north-reader")
    south_reader = make_member(south, Role.RADIOLOGIST, "south-reader")
    approved_modality(south, "DEMO_MR")
    files = write_files(tmp_path, make_study(series=1, instances_per_series=2))

    assert associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=files).statuses == [0, 0]

    with tenant_scope(north):
        assert study_list(actor=north_reader).count() == 1
    with tenant_scope(south):
        assert study_list(actor=south_reader).count() == 0
        assert IngestItem.objects.count() == 0


def test_north_device_calling_south_is_rejected(listener, north, south, demo_ct, tmp_path):
    files = write_files(tmp_path, make_study(series=1, instances_per_series=1))

    result = associate(port=listener.port, calling="DEMO_CT", called="SOUTH", files=files)

    assert not result.established
    assert result.rejected
    assert result.diagnostic == CALLING_AE_NOT_RECOGNISED
    [event] = _rejections(south)
    assert event.extra == {"calling_ae": "DEMO_CT", "called_ae": "SOUTH", "address": "127.0.0.1"}
    assert _rejections(north) == []
    with tenant_scope(south):
        assert IngestItem.objects.count() == 0
    with tenant_scope(north):
        assert IngestItem.objects.count() == 0


def test_unknown_calling_ae_is_rejected_with_an_audit_event_and_a_security_alert(listener, north, demo_ct):
    result = associate(port=listener.port, calling="ROGUE_SCU", called="NORTH")

    assert result.rejected
    assert result.diagnostic == CALLING_AE_NOT_RECOGNISED
    [event] = _rejections(north)
    assert event.outcome == Outcome.SERIOUS_FAILURE
    assert event.system_principal == "dicom:ROGUE_SCU"
    assert event.source_address == "127.0.0.1"
    assert event.extra["calling_ae"] == "ROGUE_SCU"
    with tenant_scope(north):
        alert = SecurityAlert.objects.get(event=event)
    assert alert.kind == "unknown_device"
    assert alert.tenant_id == north.pk
    assert "ROGUE_SCU" in alert.summary


def test_unknown_called_ae_is_rejected_on_the_platform_chain(listener, north, demo_ct):
    result = associate(port=listener.port, calling="DEMO_CT", called="NOWHERE")

    assert result.rejected
    assert result.diagnostic == CALLED_AE_NOT_RECOGNISED
    event = AuditEvent.unscoped_objects.get(event_type=EventType.ASSOCIATION_REJECTED)
    assert event.tenant_id is None
    assert event.extra["called_ae"] == "NOWHERE"
    assert SecurityAlert.unscoped_objects.get(event=event).tenant_id is None


def test_the_right_ae_title_from_the_wrong_address_is_rejected(listener, north):
    approved_modality(north, "FAR_CT", host="10.9.9.9")

    result = associate(port=listener.port, calling="FAR_CT", called="NORTH")

    assert result.rejected
    assert result.diagnostic == CALLING_AE_NOT_RECOGNISED
    [event] = _rejections(north)
    assert event.extra == {"calling_ae": "FAR_CT", "called_ae": "NORTH", "address": "127.0.0.1"}


def test_a_device_waiting_for_approval_is_rejected(listener, north, admin_a):
    with tenant_scope(north):
        device = device_register(actor=admin_a, kind=Device.Kind.MODALITY, name="New CT", ae_title="NEW_CT",
                                 host="127.0.0.1")  # fmt: skip
    assert device.status == Device.Status.PENDING

    result = associate(port=listener.port, calling="NEW_CT", called="NORTH")

    assert result.rejected
    assert len(_rejections(north)) == 1


@pytest.mark.parametrize(
    ("syntax", "bits"), [(RLELossless, 16), (JPEG2000Lossless, 16), (JPEGBaseline8Bit, 8)], ids=["rle", "j2k", "jpeg"]
)
def test_compressed_transfer_syntaxes_are_accepted_and_stored(listener, north, demo_ct, tmp_path, syntax, bits):
    blob = make_instance(transfer_syntax=syntax, bits=bits, rows=64, columns=64)
    [path] = write_files(tmp_path, [blob])

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [0x0000]
    with tenant_scope(north):
        item = IngestItem.objects.get()
        assert item.state == IngestItem.State.STORED, item.reason
        assert Instance.objects.get().transfer_syntax_uid == syntax


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_content_is_rejected_by_the_pipeline_and_the_sender_told_its_reason(listener, north, demo_ct, tmp_path):
    # A non-zero preamble is not sent over the network (C-STORE carries the data set only), so content checks are
    # what the pipeline sees here: a data set without the UIDs an instance must have.
    blob = make_instance()
    data = bytearray(blob)
    uid = sop_instance_uid(blob).encode()
    # Break the SOP Instance UID in the data set (not the file meta) so parsing rejects it.
    at = data.rindex(uid)
    data[at : at + len(uid)] = b"X" * len(uid)
    [path] = write_files(tmp_path, [bytes(data)])

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    # Quarantined, then the pipeline's verdict (tasks run in-process here, so it is known before the answer).
    assert result.statuses == [STATUS_CANNOT_UNDERSTAND]
    assert "SOP Instance UID" in result.comments[0]
    with tenant_scope(north):
        item = IngestItem.objects.get()
        assert item.state == IngestItem.State.REJECTED
        assert "SOP Instance UID" in item.reason
        assert Instance.objects.count() == 0


def test_an_object_over_the_size_limit_is_refused_at_receipt(listener, north, demo_ct, tmp_path):
    [path] = write_files(tmp_path, [make_instance(rows=64, columns=64)])

    with override_settings(INGEST_MAX_BYTES=1024):
        result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [STATUS_CANNOT_UNDERSTAND]
    assert "larger than the limit" in result.comments[0]
    with tenant_scope(north):
        assert IngestItem.objects.count() == 0


def test_a_quarantine_that_cannot_be_written_answers_out_of_resources(listener, north, demo_ct, tmp_path):
    [path] = write_files(tmp_path, [make_instance()])
    broken = {**storages.backends}
    # A store whose folder sits under a regular file: every write fails, even for root.
    broken["quarantine"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": "/dev/null/quarantine"},
    }

    with override_settings(STORAGES=broken):
        result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [STATUS_OUT_OF_RESOURCES]
    with tenant_scope(north):
        assert IngestItem.objects.count() == 0


def test_accepted_connections_have_tcp_nodelay(listener, demo_ct):
    seen: list[int] = []

    def look(_assoc):
        [server_side] = listener.active_associations
        seen.append(server_side.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", during=look)

    assert result.established
    assert len(seen) == 1
    assert seen[0] != 0


def _connections_to_test_db() -> int:
    with connection.cursor() as cursor:
        # Sessions of a role only: an autovacuum worker on this database has none (and comes and goes on its own)
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usesysid IS NOT NULL"
        )
        return int(cursor.fetchone()[0])


def test_associations_give_back_their_database_connections(listener, north, demo_ct, tmp_path):
    files = write_files(tmp_path, make_study(series=1, instances_per_series=1))
    before = _connections_to_test_db()

    for _ in range(4):
        associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=files)
    associate(port=listener.port, calling="ROGUE_SCU", called="NORTH")

    deadline = time.monotonic() + 5
    while _connections_to_test_db() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _connections_to_test_db() <= before


def test_stopping_aborts_an_association_left_open_after_the_grace_period(listener, north, demo_ct):
    ae = PromptAE(ae_title="DEMO_CT")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NORTH")
    assert assoc.is_established
    connection.ensure_connection()
    ours = connection.connection

    stop_listener(listener, grace=0.2)

    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert listener.active_associations == []
    assert connection.connection is ours  # the abort handler ran in this thread and left its connection alone
