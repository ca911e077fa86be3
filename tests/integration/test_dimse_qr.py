"""Query/retrieve end to end: `manage.py dicom_listener` as its own process (with a real Celery worker storing
what it receives) asked by dcmtk's `findscu` and `getscu`; the returned files are checked byte for byte against
the data sets that were sent."""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pydicom
import pytest

from audit.events import EventType
from audit.models import AuditEvent
from devices.models import Device
from devices.services import device_register_approved_by_operator
from studies.dicom.synthetic import make_study
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.integration.test_dicom_listener import items_final, wait_for
from tests.studies.net.scu import associate, sop_instance_uid, write_files

pytestmark = pytest.mark.integration

FINDSCU = shutil.which("findscu")
GETSCU = shutil.which("getscu")


@pytest.fixture
def north(tenant_a: Tenant) -> Tenant:
    Tenant.objects.filter(pk=tenant_a.pk).update(ae_title="NORTH")
    tenant_a.refresh_from_db()
    with tenant_scope(tenant_a):
        device_register_approved_by_operator(
            kind=Device.Kind.MODALITY, name="Demo CT", ae_title="DEMO_CT", host="127.0.0.1", reason="test"
        )
    return tenant_a


@pytest.fixture
def stored(dicom_listener_process, north, tmp_path) -> list[bytes]:
    blobs = make_study(
        series=2,
        instances_per_series=2,
        patient_id="DQR0001",
        patient_name="SYNQR^PATIENT",
        study_date=date(2024, 5, 6),
    )
    other = make_study(series=1, instances_per_series=1, patient_id="DQR0002", patient_name="ELSE^PATIENT")
    result = associate(
        port=dicom_listener_process.port,
        calling="DEMO_CT",
        called="NORTH",
        files=write_files(tmp_path / "sent", blobs + other),
    )
    assert result.statuses == [0] * 5
    wait_for(items_final(north, 5), what="5 items stored", listener=dicom_listener_process)
    return blobs


def dcmtk(tool: str | None, *args: str, cwd: Path) -> str:
    if tool is None:
        pytest.fail("dcmtk is missing: apt-get install dcmtk")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_findscu_finds_studies_by_wildcard_and_date_range(dicom_listener_process, north, stored, tmp_path):
    out = tmp_path / "find"
    out.mkdir()

    log = dcmtk(
        FINDSCU,
        "-S",
        "-X",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=SYN*",
        "-k",
        "StudyDate=20240101-20241231",
        "-k",
        "StudyInstanceUID",
        "-k",
        "PatientID",
        "-k",
        "NumberOfStudyRelatedInstances",
        "-aet",
        "DEMO_CT",
        "-aec",
        "NORTH",
        "127.0.0.1",
        str(dicom_listener_process.port),
        cwd=tmp_path,
    )

    responses = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert len(responses) == 1, log
    [found] = responses
    sent = pydicom.dcmread(io.BytesIO(stored[0]), stop_before_pixels=True)
    assert found.StudyInstanceUID == sent.StudyInstanceUID
    assert found.PatientID == "DQR0001"
    assert int(found.NumberOfStudyRelatedInstances) == 4
    with tenant_scope(north):
        event = AuditEvent.objects.get(event_type=EventType.STUDIES_QUERIED)
    assert event.extra["results"] == 1
    assert event.system_principal == "dicom:DEMO_CT"


def test_getscu_retrieves_the_stored_bytes(dicom_listener_process, north, stored, tmp_path):
    out = tmp_path / "get"
    out.mkdir()
    study_uid = pydicom.dcmread(io.BytesIO(stored[0]), stop_before_pixels=True).StudyInstanceUID

    log = dcmtk(
        GETSCU,
        "-S",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-aet",
        "DEMO_CT",
        "-aec",
        "NORTH",
        "127.0.0.1",
        str(dicom_listener_process.port),
        cwd=tmp_path,
    )

    files = sorted(p for p in out.iterdir() if p.is_file())
    assert len(files) == 4, log
    sent = {sop_instance_uid(b): pydicom.dcmread(io.BytesIO(b)) for b in stored}
    for path in files:
        got = pydicom.dcmread(path)
        original = sent[got.SOPInstanceUID]
        assert got.PixelData == original.PixelData
        # Every data element as sent (getscu writes its own file meta header).
        assert [(e.tag, e.value) for e in got if e.tag != 0x7FE00010] == [
            (e.tag, e.value) for e in original if e.tag != 0x7FE00010
        ]
    with tenant_scope(north):
        # One event, written before the first instance left; a second one would say some sub-operations failed.
        event = AuditEvent.objects.get(event_type=EventType.INSTANCES_RETRIEVED)
    assert event.extra["count"] == 4
