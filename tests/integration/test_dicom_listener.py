"""The DICOM door end to end with real parts on loopback: `manage.py dicom_listener` as its own process, a real
Celery worker on Redis, clamd with a test signature, and real DICOM clients (dcmtk's `storescu`, pynetdicom)."""

from __future__ import annotations

import io
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from devices.models import Device
from devices.services import device_register_approved_by_operator
from studies.dicom.synthetic import make_instance, make_study
from studies.models import IngestItem, Instance, Study
from studies.scanning import eicar_test_bytes
from studies.storage.blobs import blob_read
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.studies.conftest import (
    EICAR_FOUND_AS,
    clamd_daemon,  # noqa: F401 -- the session's clamd, for the worker
)
from tests.studies.net.scu import associate, echo, sop_instance_uid, write_files

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker_scans_with_clamd")]

STORESCU = shutil.which("storescu")
FINAL = {s.value for s in IngestItem.FINAL_STATES}


@pytest.fixture
def worker_scans_with_clamd(clamd_daemon, monkeypatch):  # noqa: F811
    """The worker (started after this, since usefixtures come first) scans with the real clamd."""
    monkeypatch.setenv("CLAMD_ADDRESS", clamd_daemon.unix_address)
    return clamd_daemon


@pytest.fixture
def north(tenant_a: Tenant) -> Tenant:
    Tenant.objects.filter(pk=tenant_a.pk).update(ae_title="NORTH")
    tenant_a.refresh_from_db()
    with tenant_scope(tenant_a):
        device_register_approved_by_operator(
            kind=Device.Kind.MODALITY, name="Demo CT", ae_title="DEMO_CT", host="127.0.0.1", reason="test"
        )
    return tenant_a


def storescu(port: int, files: Sequence[Path], *, calling: str = "DEMO_CT", called: str = "NORTH") -> str:
    if STORESCU is None:
        pytest.fail("dcmtk's storescu is missing: apt-get install dcmtk")
    # -xr: propose RLE Lossless besides the uncompressed syntaxes. TCP_NODELAY=1: dcmtk's own Nagle switch.
    done = subprocess.run(
        [STORESCU, "-aet", calling, "-aec", called, "-xr", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=120, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def wait_for(predicate: Callable[[], bool], *, what: str, listener, timeout: float = 90.0) -> None:
    """Poll the database until `predicate` holds; fail early if the listener dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if listener.process.poll() is not None:
            pytest.fail(f"the DICOM listener exited early:\n{listener.output()}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; listener log:\n{listener.output()}")


def items_final(tenant: Tenant, count: int) -> Callable[[], bool]:
    def check() -> bool:
        with tenant_scope(tenant):
            states = list(IngestItem.objects.values_list("state", flat=True))
        return len(states) >= count and all(s in FINAL for s in states)

    return check


def test_storescu_sends_a_study_stored_exactly_once_and_again_as_duplicates(dicom_listener_process, north, tmp_path):
    blobs = make_study(series=2, instances_per_series=3, patient_id="INT0001")
    blobs.append(make_instance(study_uid=pydicom.dcmread(io.BytesIO(blobs[0])).StudyInstanceUID,
                               transfer_syntax=RLELossless, series_number=3, patient_id="INT0001"))  # fmt: skip
    files = write_files(tmp_path / "study", blobs)
    uids = {sop_instance_uid(b) for b in blobs}

    out = storescu(dicom_listener_process.port, files)

    wait_for(items_final(north, 7), what="7 items to finish", listener=dicom_listener_process)
    with tenant_scope(north):
        items = list(IngestItem.objects.all())
        assert len(items) == 7, out
        assert {i.state for i in items} == {IngestItem.State.STORED}, [i.reason for i in items]
        assert {i.source for i in items} == {IngestItem.Source.CSTORE}
        assert len({i.batch for i in items}) == 1
        assert Instance.objects.count() == 7
        assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == uids
        study = Study.objects.get()
        assert (study.number_of_series, study.number_of_instances) == (3, 7)

    out = storescu(dicom_listener_process.port, files)

    wait_for(items_final(north, 14), what="the second sending to finish", listener=dicom_listener_process)
    with tenant_scope(north):
        second = IngestItem.objects.exclude(batch=items[0].batch)
        assert second.count() == 7, out
        assert set(second.values_list("state", flat=True)) == {IngestItem.State.DUPLICATE}
        assert Instance.objects.count() == 7


def test_pynetdicom_scu_sends_a_study_to_processes_that_settled_before_serving(
    dicom_listener_process, celery_worker_process, north, tmp_path
):
    """The listener and the worker (its main process and its pool process each) freeze their start-up objects out
    of the cycle collector's reach once loaded (portal.web.runtime), and the pipeline stores as before."""
    files = write_files(tmp_path, make_study(series=2, instances_per_series=2))

    result = associate(port=dicom_listener_process.port, calling="DEMO_CT", called="NORTH", files=files)

    assert result.statuses == [0x0000] * 4
    wait_for(items_final(north, 4), what="4 items to finish", listener=dicom_listener_process)
    with tenant_scope(north):
        assert set(IngestItem.objects.values_list("state", flat=True)) == {IngestItem.State.STORED}
        assert Study.objects.get().number_of_instances == 4
    listener_pid = dicom_listener_process.process.pid
    pattern = r"DICOM listener process (\d+) settled: (\d+) start-up objects"
    settled = re.findall(pattern, dicom_listener_process.output())
    assert [int(pid) for pid, _ in settled] == [listener_pid]
    assert int(settled[0][1]) > 100_000  # the loaded application, no longer walked by each full collection
    workers = re.findall(r"Celery worker process (\d+) settled: (\d+) start-up objects", celery_worker_process.output())
    assert len({pid for pid, _ in workers}) == 2, celery_worker_process.output()  # the main process and its child
    assert all(int(count) > 100_000 for _, count in workers)


def _with_eicar() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    ds.private_block(0x0009, "ENCLAVE TEST", create=True).add_new(0x10, "OB", eicar_test_bytes())
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _with_executable_preamble() -> bytes:
    data = bytearray(make_instance())
    data[:4] = b"\x7fELF"
    return bytes(data)


def test_eicar_is_rejected_as_malware_and_an_executable_preamble_never_crosses_the_network(
    dicom_listener_process, north, tmp_path
):
    infected, elf = _with_eicar(), _with_executable_preamble()
    files = write_files(tmp_path, [infected, elf])

    out = storescu(dicom_listener_process.port, files)

    wait_for(items_final(north, 2), what="both items to finish", listener=dicom_listener_process)
    with tenant_scope(north):
        by_uid = {i.sop_instance_uid or "": i for i in IngestItem.objects.all()}
        rejected = IngestItem.objects.get(state=IngestItem.State.REJECTED)
        assert EICAR_FOUND_AS in rejected.reason, out  # clamd's verdict, not the built-in scanner's
        assert rejected.reason.startswith("Malware found")
        # A C-STORE carries the data set only: the 128-byte preamble (where the ELF header was) stays behind at
        # the sender, and the listener writes a zero one. The object is stored harmless.
        stored = by_uid[sop_instance_uid(elf)]
        assert stored.state == IngestItem.State.STORED
        data = blob_read(blob=Instance.objects.get(sop_instance_uid=sop_instance_uid(elf)).blob)
        assert data[:132] == b"\x00" * 128 + b"DICM"
        assert Instance.objects.count() == 1


def test_the_listener_stops_cleanly_on_sigterm(dicom_listener_process):
    assert echo(port=dicom_listener_process.port, calling="DEMO_CT", called="NOWHERE") is None  # rejected, still up

    dicom_listener_process.process.send_signal(signal.SIGTERM)

    assert dicom_listener_process.process.wait(timeout=20) == 0
    assert "DICOM listener stopped" in dicom_listener_process.output()
