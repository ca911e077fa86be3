"""C-STORE through the real listener (in this process, spoken to by pynetdicom's SCU) for issue 8 #7 and #12:
an out-of-range number or a fault inside the pipeline is a failure status with the reason and a rejected item,
never OutOfResources and an item left `processing`; and the same instance sent by C-STORE and then by STOW-RS is
"already stored", while a changed pixel is a conflict.

Celery is eager here, so the pipeline has decided before the listener answers the C-STORE.
"""

from __future__ import annotations

import hashlib
import io

import pydicom
import pytest

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from studies.dicomweb import stow
from studies.models import IngestItem, Instance
from studies.net.scp import STATUS_CANNOT_UNDERSTAND, STATUS_DUPLICATE_SOP_INSTANCE, STATUS_PROCESSING_FAILURE
from studies.services import ingest as ingest_service
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import (
    FAILURE_REASON,
    REFERENCED_SOP_INSTANCE,
    failed,
    post_parts,
    referenced,
    value,
)
from tests.studies.hostile_dicom import TEN_TO_THE_20, out_of_range
from tests.studies.net.scu import associate, sop_instance_uid, write_files
from tests.tenants.helpers import last_event

pytestmark = pytest.mark.filterwarnings("ignore:The value length", "ignore:Invalid value for VR")

STOW = "/dicomweb/north/studies"


def items(tenant) -> list[IngestItem]:
    with tenant_scope(tenant):
        return list(IngestItem.objects.order_by("pk"))


@pytest.mark.parametrize("keyword", ["InstanceNumber", "SeriesNumber"])
@pytest.mark.parametrize("sign", ["", "-"])
def test_an_out_of_range_number_is_a_failure_status_and_a_rejected_item(
    listener, north, demo_ct, tmp_path, keyword, sign
):
    [path] = write_files(tmp_path, [out_of_range(keyword, f"{sign}{TEN_TO_THE_20}")])

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [STATUS_CANNOT_UNDERSTAND]
    assert "outside the range" in result.comments[0]
    [item] = items(north)
    assert (item.state, item.failure) == (IngestItem.State.REJECTED, IngestItem.Failure.INVALID)
    assert item.device_id == demo_ct.pk
    with tenant_scope(north):
        assert not Instance.objects.exists()


def test_a_fault_inside_the_pipeline_is_a_processing_failure_and_the_item_rejected(
    listener, north, demo_ct, tmp_path, monkeypatch
):
    def broken_index(**kwargs):
        raise RuntimeError("a fault nobody foresaw")

    monkeypatch.setattr(ingest_service, "_series_create", broken_index)  # where a new series is made
    [path] = write_files(tmp_path, [make_instance()])

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [STATUS_PROCESSING_FAILURE]
    assert "internal error" in result.comments[0]
    [item] = items(north)
    assert (item.state, item.failure) == (IngestItem.State.REJECTED, IngestItem.Failure.INTERNAL)
    assert last_event(north, EventType.INGEST_REJECTED).system_principal == "dicom:DEMO_CT"


def test_the_same_instance_by_c_store_then_stow_rs_is_already_stored(
    listener, north, demo_ct, api_client_for, radiologist_a, tmp_path
):
    data = make_instance()
    [path] = write_files(tmp_path, [data])
    assert associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path]).statuses == [0x0000]
    with tenant_scope(north):
        stored = Instance.objects.select_related("blob").get()
    # The listener rebuilt the Part-10 header: the stored file is not byte for byte the sender's.
    assert stored.sha256 != hashlib.sha256(data).hexdigest()

    response = post_parts(api_client_for(radiologist_a, north), STOW, [data])

    assert response.status_code == 200
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(response.json())] == [sop_instance_uid(data)]
    assert [i.state for i in items(north)] == [IngestItem.State.STORED, IngestItem.State.DUPLICATE]
    with tenant_scope(north):
        assert Instance.objects.count() == 1


def test_the_same_instance_by_stow_rs_then_c_store_is_already_stored(
    listener, north, demo_ct, api_client_for, radiologist_a, tmp_path
):
    data = make_instance()
    assert post_parts(api_client_for(radiologist_a, north), STOW, [data]).status_code == 200
    [path] = write_files(tmp_path, [data])

    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])

    assert result.statuses == [0x0000]
    assert [i.state for i in items(north)] == [IngestItem.State.STORED, IngestItem.State.DUPLICATE]


def _with_one_pixel_changed(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0x01
    ds.PixelData = bytes(pixels)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_changed_pixel_under_the_same_uid_is_a_conflict(
    listener, north, demo_ct, api_client_for, radiologist_a, tmp_path
):
    data = make_instance()
    [path] = write_files(tmp_path, [data])
    assert associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path]).statuses == [0x0000]

    response = post_parts(api_client_for(radiologist_a, north), STOW, [_with_one_pixel_changed(data)])

    assert response.status_code == 409
    [part] = failed(response.json())
    assert value(part, FAILURE_REASON) == stow.FAILURE_DUPLICATE_SOP_INSTANCE
    assert [i.state for i in items(north)] == [IngestItem.State.STORED, IngestItem.State.CONFLICT]

    # And the other way round: the changed one by C-STORE is a conflict too, answered as such.
    [changed] = write_files(tmp_path / "changed", [_with_one_pixel_changed(data)])
    result = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[changed])
    assert result.statuses == [STATUS_DUPLICATE_SOP_INSTANCE]
    assert items(north)[-1].state == IngestItem.State.CONFLICT


def test_a_changed_patient_id_under_the_same_uid_is_a_conflict(north, api_client_for, radiologist_a):
    client = api_client_for(radiologist_a, north)
    data = make_instance(patient_id="P-ONE")
    assert post_parts(client, STOW, [data]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientID = "P-TWO"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)

    response = post_parts(client, STOW, [out.getvalue()])

    assert response.status_code == 409
    assert items(north)[-1].state == IngestItem.State.CONFLICT
