"""Query/retrieve on the in-process listener: pynetdicom's SCU asks C-FIND, C-GET and C-MOVE over loopback.

The studies are sent first by C-STORE (Celery is eager here, so they are stored when the sender has its answer).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from devices.models import Device
from devices.selectors import move_destination_get
from devices.services import device_register_approved_by_operator
from studies.dicom.query import Level, QueryError, query_parse
from studies.dicom.synthetic import make_study
from studies.net.qr import MOVE_MAXIMUM_PDU_SIZE
from studies.net.reactor import PromptAE
from studies.selectors import like_pattern
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.studies.net.conftest import approved_modality
from tests.studies.net.scu import associate, sop_instance_uid, write_files

STUDY_FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind
MOVE_DESTINATION_UNKNOWN = 0xA801


# A small archive: two NORTH patients, one SOUTH patient
# ------------------------------------------------------------------------------


@dataclass
class Archive:
    port: int
    north_ct: list[bytes]
    north_mr: list[bytes]
    south: list[bytes]

    def uid(self, blobs: list[bytes], keyword: str) -> str:
        return str(getattr(dcmread(io.BytesIO(blobs[0]), stop_before_pixels=True), keyword))


@pytest.fixture
def archive(listener, north, south, demo_ct, tmp_path) -> Archive:
    approved_modality(south, "DEMO_MR")
    north_ct = make_study(
        series=2,
        instances_per_series=2,
        patient_id="QR0001",
        patient_name="SYNTHETIC^ALPHA",
        accession="ACC-CT-1",
        study_date=date(2024, 3, 5),
        modality="CT",
    )
    north_mr = make_study(
        series=1,
        instances_per_series=1,
        patient_id="QR0002",
        patient_name="OTHER^BETA",
        accession="ACC-MR-1",
        study_date=date(2023, 7, 1),
        modality="MR",
    )
    south = make_study(
        series=1,
        instances_per_series=1,
        patient_id="QR0003",
        patient_name="SYNTHETIC^GAMMA",
        accession="ACC-S-1",
        study_date=date(2024, 3, 6),
    )
    sent = associate(
        port=listener.port, calling="DEMO_CT", called="NORTH", files=write_files(tmp_path / "n", north_ct + north_mr)
    )
    assert sent.statuses == [0] * 5
    sent = associate(port=listener.port, calling="DEMO_MR", called="SOUTH", files=write_files(tmp_path / "s", south))
    assert sent.statuses == [0]
    return Archive(port=listener.port, north_ct=north_ct, north_mr=north_mr, south=south)


# SCU helpers
# ------------------------------------------------------------------------------


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@dataclass
class FindResult:
    statuses: list[int] = field(default_factory=list)
    matches: list[Dataset] = field(default_factory=list)


def c_find(
    port: int, ds: Dataset, *, model: str = STUDY_FIND, calling: str = "DEMO_CT", called: str = "NORTH"
) -> FindResult:
    ae = PromptAE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    result = FindResult()
    try:
        for status, found in assoc.send_c_find(ds, model):
            result.statuses.append(int(status.Status))
            if found is not None and int(status.Status) in (0xFF00, 0xFF01):
                result.matches.append(found)
    finally:
        assoc.release()
    return result


@dataclass
class GetResult:
    statuses: list[Dataset] = field(default_factory=list)
    received: list[Dataset] = field(default_factory=list)

    @property
    def final(self) -> Dataset:
        return self.statuses[-1]


def _storage_handler(into: list[Dataset]) -> Any:
    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        into.append(ds)
        return 0x0000

    return on_store


def c_get(
    port: int,
    ds: Dataset,
    *,
    model: str = StudyRootQueryRetrieveInformationModelGet,
    calling: str = "DEMO_CT",
    called: str = "NORTH",
) -> GetResult:
    ae = PromptAE(ae_title=calling)
    ae.add_requested_context(model)
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class)
    roles = [build_role(CTImageStorage, scp_role=True), build_role(MRImageStorage, scp_role=True)]
    result = GetResult()
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=called,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, _storage_handler(result.received))],
    )
    assert assoc.is_established
    try:
        for status, _found in assoc.send_c_get(ds, model):
            result.statuses.append(status)
    finally:
        assoc.release()
    return result


def c_move(
    port: int, ds: Dataset, destination: str, *, calling: str = "DEMO_CT", called: str = "NORTH"
) -> list[Dataset]:
    model = StudyRootQueryRetrieveInformationModelMove
    ae = PromptAE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_move(ds, destination, model)]
    finally:
        assoc.release()


def events(tenant: Tenant, event_type: EventType) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event_type).order_by("sequence"))


# Pure parsing
# ------------------------------------------------------------------------------


def test_query_parse_reads_wildcards_ranges_and_lists():
    ds = identifier(
        "STUDY",
        PatientName="SYN*",
        StudyDate="20240101-",
        StudyInstanceUID=["1.2.3", "1.2.4"],
        AccessionNumber="",
        SeriesInstanceUID="9.9",
    )
    query = query_parse(ds, sop_class_uid=STUDY_FIND)

    assert query.level is Level.STUDY
    assert query.keys["PatientName"] == "SYN*"
    assert query.keys["StudyDate"] == "20240101-"
    assert query.keys["StudyInstanceUID"] == "1.2.3\\1.2.4"
    assert query.keys["AccessionNumber"] == ""
    assert "AccessionNumber" in query.requested
    assert "AccessionNumber" not in query.summary()


@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        (STUDY_FIND, "PATIENT", {}),
        (STUDY_FIND, "FRAME", {}),
        (StudyRootQueryRetrieveInformationModelGet, "SERIES", {}),  # a retrieval names its series
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_query_parse_refuses_what_it_cannot_serve(model, level, keys):
    retrieve = model == StudyRootQueryRetrieveInformationModelGet
    with pytest.raises(QueryError):
        query_parse(identifier(level, **keys), sop_class_uid=model, retrieve=retrieve)


def test_like_pattern_escapes_everything_but_the_wildcards():
    assert like_pattern("A%B_C\\D**E?") == "A\\%B\\_C\\\\D%E_"


# C-FIND
# ------------------------------------------------------------------------------


def test_find_studies_by_patient_name_wildcard(archive, north):
    found = c_find(
        archive.port,
        identifier("STUDY", PatientName="syn*", StudyInstanceUID="", PatientID="", NumberOfStudyRelatedInstances=""),
    )

    assert found.statuses[-1] == 0x0000
    [match] = found.matches
    assert match.StudyInstanceUID == archive.uid(archive.north_ct, "StudyInstanceUID")
    assert match.PatientID == "QR0001"
    assert match.NumberOfStudyRelatedInstances == 4
    assert match.RetrieveAETitle == "NORTH"
    [event] = events(north, EventType.STUDIES_QUERIED)
    assert event.extra["results"] == 1
    assert event.extra["keys"]["PatientName"] == "syn*"
    assert event.system_principal == "dicom:DEMO_CT"
    assert event.outcome == Outcome.SUCCESS
    # The patients and studies it returned, as QIDO-RS records them (one participant builder).
    kinds = {(p["type"], p["id"]) for p in event.participants}
    assert {("patient", "QR0001"), ("study", match.StudyInstanceUID)} <= kinds


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"StudyDate": "20240101-"}, {"QR0001"}),
        ({"StudyDate": "-20231231"}, {"QR0002"}),
        ({"StudyDate": "20230701"}, {"QR0002"}),
        ({"StudyDate": "20230101-20241231"}, {"QR0001", "QR0002"}),
        ({"AccessionNumber": "ACC-MR-1"}, {"QR0002"}),
        ({"AccessionNumber": "ACC-??-1"}, {"QR0001", "QR0002"}),
        ({"ModalitiesInStudy": "MR"}, {"QR0002"}),
        ({"ModalitiesInStudy": ["MR", "CT"]}, {"QR0001", "QR0002"}),
        ({"PatientID": "QR000?"}, {"QR0001", "QR0002"}),
        ({"PatientName": "OTHER^BETA"}, {"QR0002"}),
        ({"PatientName": "*GAMMA"}, set()),  # SOUTH's patient
    ],
)
def test_find_studies_matching(archive, keys, expected):
    found = c_find(archive.port, identifier("STUDY", **{"PatientID": "", **keys}))

    assert found.statuses[-1] == 0x0000
    assert {m.PatientID for m in found.matches} == expected


def test_find_study_uid_list(archive):
    uids = [archive.uid(archive.north_ct, "StudyInstanceUID"), archive.uid(archive.north_mr, "StudyInstanceUID")]

    found = c_find(archive.port, identifier("STUDY", StudyInstanceUID=uids))

    assert sorted(m.StudyInstanceUID for m in found.matches) == sorted(uids)


def test_find_patient_level_in_patient_root(archive):
    found = c_find(
        archive.port,
        identifier("PATIENT", PatientID="", PatientName="SYN*", NumberOfPatientRelatedStudies=""),
        model=PATIENT_FIND,
    )

    [match] = found.matches
    assert (match.PatientID, str(match.PatientName), match.NumberOfPatientRelatedStudies) == (
        "QR0001",
        "SYNTHETIC^ALPHA",
        1,
    )


def test_find_patient_level_in_study_root_is_refused_and_recorded(archive, north):
    found = c_find(archive.port, identifier("PATIENT", PatientID=""))

    assert found.statuses == [0xA900]
    [event] = events(north, EventType.STUDIES_QUERIED)
    assert event.outcome == Outcome.MINOR_FAILURE


@pytest.mark.parametrize("model", [STUDY_FIND, PATIENT_FIND])
def test_find_series_and_images(archive, model):
    study_uid = archive.uid(archive.north_ct, "StudyInstanceUID")
    port = archive.port

    series = c_find(
        port,
        identifier(
            "SERIES",
            StudyInstanceUID=study_uid,
            SeriesInstanceUID="",
            Modality="CT",
            SeriesNumber="",
            NumberOfSeriesRelatedInstances="",
        ),
        model=model,
    )
    assert [s.SeriesNumber for s in series.matches] == [1, 2]
    assert {s.NumberOfSeriesRelatedInstances for s in series.matches} == {2}

    series_uid = series.matches[1].SeriesInstanceUID
    images = c_find(
        port,
        identifier(
            "IMAGE",
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            SOPInstanceUID="",
            SOPClassUID="",
            InstanceNumber="",
        ),
        model=model,
    )
    expected = {sop_instance_uid(b) for b in archive.north_ct[2:]}
    assert {i.SOPInstanceUID for i in images.matches} == expected
    assert {i.SOPClassUID for i in images.matches} == {CTImageStorage}

    one = c_find(port, identifier("IMAGE", SOPInstanceUID=sorted(expected)[0], InstanceNumber=""), model=model)
    assert [i.SOPInstanceUID for i in one.matches] == [sorted(expected)[0]]


def test_a_study_sent_to_north_is_not_found_through_south(archive, south):
    north_uid = archive.uid(archive.north_ct, "StudyInstanceUID")

    found = c_find(archive.port, identifier("STUDY", StudyInstanceUID=north_uid), calling="DEMO_MR", called="SOUTH")
    everything = c_find(archive.port, identifier("STUDY", PatientID=""), calling="DEMO_MR", called="SOUTH")

    assert found.statuses == [0x0000]
    assert found.matches == []
    assert [m.PatientID for m in everything.matches] == ["QR0003"]
    assert [e.extra["results"] for e in events(south, EventType.STUDIES_QUERIED)] == [0, 1]


# C-GET
# ------------------------------------------------------------------------------


def test_get_a_study_returns_the_stored_data_sets(archive, north):
    study_uid = archive.uid(archive.north_ct, "StudyInstanceUID")

    result = c_get(archive.port, identifier("STUDY", StudyInstanceUID=study_uid))

    assert result.final.Status == 0x0000
    assert result.final.NumberOfCompletedSuboperations == 4
    assert result.final.NumberOfFailedSuboperations == 0
    originals = {sop_instance_uid(b): dcmread(io.BytesIO(b)) for b in archive.north_ct}
    assert {ds.SOPInstanceUID for ds in result.received} == set(originals)
    for ds in result.received:
        assert ds.PixelData == originals[ds.SOPInstanceUID].PixelData
        assert ds.PatientID == "QR0001"
    [event] = events(north, EventType.INSTANCES_RETRIEVED)  # written before the first data set, none after
    assert event.extra["count"] == 4
    assert event.system_principal == "dicom:DEMO_CT"
    kinds = {(p["type"], p["id"]) for p in event.participants}
    assert {("patient", "QR0001"), ("study", study_uid)} <= kinds


def test_get_with_one_instance_damaged_in_both_stores_sends_the_others_and_reports_it(archive, north):
    """An instance whose primary and replica copies are both damaged is one failed sub-operation, counted and on
    the trail; the other instances still arrive (the damage is that instance's, not the request's)."""
    from django.core.files.storage import storages

    from studies.models import Instance

    study_uid = archive.uid(archive.north_ct, "StudyInstanceUID")
    damaged = sop_instance_uid(archive.north_ct[0])
    with tenant_scope(north):
        blob = Instance.objects.select_related("blob").get(sop_instance_uid=damaged).blob
    for store in ("blobs", "replica"):
        with open(storages[store].path(blob.storage_name), "r+b") as f:
            f.seek(64)
            f.write(b"\x00" * 64)

    result = c_get(archive.port, identifier("STUDY", StudyInstanceUID=study_uid))

    assert result.final.NumberOfCompletedSuboperations == 3
    assert result.final.NumberOfFailedSuboperations == 1
    assert result.final.Status != 0x0000
    assert damaged not in {ds.SOPInstanceUID for ds in result.received}
    retrieved = events(north, EventType.INSTANCES_RETRIEVED)
    assert retrieved[0].extra["count"] == 4  # written before anything left
    assert retrieved[-1].extra.get("failed") == 1  # and the failed part after


def test_get_a_series_and_an_image_in_patient_root(archive):
    port = archive.port
    series_uid = archive.uid(archive.north_ct, "SeriesInstanceUID")
    sop_uid = sop_instance_uid(archive.north_ct[0])
    model = PatientRootQueryRetrieveInformationModelGet

    series = c_get(port, identifier("SERIES", PatientID="QR0001", SeriesInstanceUID=series_uid), model=model)
    image = c_get(port, identifier("IMAGE", SOPInstanceUID=sop_uid), model=model)

    assert {ds.SOPInstanceUID for ds in series.received} == {sop_instance_uid(b) for b in archive.north_ct[:2]}
    assert [ds.SOPInstanceUID for ds in image.received] == [sop_uid]


def test_get_of_another_tenants_study_sends_nothing(archive, north, south):
    south_uid = archive.uid(archive.south, "StudyInstanceUID")

    result = c_get(archive.port, identifier("STUDY", StudyInstanceUID=south_uid))

    assert result.final.Status == 0x0000
    assert result.received == []
    [event] = events(north, EventType.INSTANCES_RETRIEVED)
    assert event.extra["count"] == 0
    assert events(south, EventType.INSTANCES_RETRIEVED) == []


# C-MOVE
# ------------------------------------------------------------------------------


@pytest.fixture
def destination(north) -> Iterator[tuple[Any, list[Dataset]]]:
    received: list[Dataset] = []
    ae = AE(ae_title="DEST_WS")
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, _storage_handler(received))]
    )
    with tenant_scope(north):
        device = device_register_approved_by_operator(
            kind=Device.Kind.WORKSTATION, name="Reading room", ae_title="DEST_WS", host="127.0.0.1", reason="test"
        )
        Device.objects.filter(pk=device.pk).update(port=server.server_address[1])
    try:
        yield server, received
    finally:
        server.shutdown()


def test_move_to_an_approved_destination(archive, north, destination):
    _server, received = destination
    study_uid = archive.uid(archive.north_ct, "StudyInstanceUID")

    statuses = c_move(archive.port, identifier("STUDY", StudyInstanceUID=study_uid), "DEST_WS")

    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 4
    assert {ds.SOPInstanceUID for ds in received} == {sop_instance_uid(b) for b in archive.north_ct}
    [event] = events(north, EventType.INSTANCES_MOVED)
    assert event.extra["destination_ae"] == "DEST_WS"
    assert event.extra["count"] == 4
    assert event.outcome == Outcome.SUCCESS
    assert MOVE_MAXIMUM_PDU_SIZE > 0


@pytest.mark.parametrize("destination_ae", ["NOWHERE", "DEMO_MR"])  # unknown; a device of SOUTH
def test_move_to_an_unknown_or_other_tenant_destination_is_refused(archive, north, destination_ae):
    study_uid = archive.uid(archive.north_ct, "StudyInstanceUID")

    statuses = c_move(archive.port, identifier("STUDY", StudyInstanceUID=study_uid), destination_ae)

    assert [s.Status for s in statuses] == [MOVE_DESTINATION_UNKNOWN]
    [event] = events(north, EventType.INSTANCES_MOVED)
    assert event.outcome == Outcome.MINOR_FAILURE
    assert event.extra["destination_ae"] == destination_ae


def test_move_destination_get_needs_an_approved_device_with_host_and_port(north, south, demo_ct):
    with tenant_scope(north):
        assert move_destination_get(ae_title="DEMO_CT") is None  # no port registered
        Device.objects.filter(pk=demo_ct.pk).update(port=104)
        assert move_destination_get(ae_title="demo_ct") == ("127.0.0.1", 104)
    with tenant_scope(south):
        assert move_destination_get(ae_title="DEMO_CT") is None


def test_a_device_revoked_mid_association_is_refused_at_its_next_query(archive, north, demo_ct):
    ae = PromptAE(ae_title="DEMO_CT")
    ae.add_requested_context(STUDY_FIND)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="NORTH")
    assert assoc.is_established
    try:
        first = [int(s.Status) for s, _ in assoc.send_c_find(identifier("STUDY", PatientID=""), STUDY_FIND)]
        with tenant_scope(north):
            Device.objects.filter(pk=demo_ct.pk).update(status=Device.Status.REVOKED)
        second = [int(s.Status) for s, _ in assoc.send_c_find(identifier("STUDY", PatientID=""), STUDY_FIND)]
    finally:
        assoc.release()

    assert first == [0xFF00, 0xFF00, 0x0000]
    assert second == [0x0124]
    outcomes = [e.outcome for e in events(north, EventType.STUDIES_QUERIED)]
    assert outcomes == [Outcome.SUCCESS, Outcome.MINOR_FAILURE]
