"""WADO-RS and WADO-URI under hostile requests and damaged objects (issue 8 #6, #8).

#6: a frame list of 4,000 entries is a 400 with the reason (it once built a 2.1 GB answer); lists are
de-duplicated; WADO-URI's rows/columns are capped like WADO-RS's viewport; answers are streamed.
#8: an instance whose pixel data cannot be decoded (stored before today's ingest checks, or slipping past them)
answers rendered, frames, thumbnail and WADO-URI with a 400 saying it cannot be rendered, never a 500; and it
does not take the study's or series' thumbnail down with it.
"""

from __future__ import annotations

import io
import uuid

import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from audit.events import EventType
from studies import services
from studies.dicom import parse as dicom_parse
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem, Instance, Series
from studies.storage.blobs import blob_read
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import events, ingest
from tests.studies.dicomweb.test_wado import parts
from tests.studies.hostile_dicom import bits_stored_over_allocated, odd_columns_ybr_422, zero_jpeg_fragment
from tests.tenants.helpers import problem

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
OCTETS = 'multipart/related; type="application/octet-stream"'


@pytest.fixture
def client(api_client_for, radiologist_a, tenant_a):
    return api_client_for(radiologist_a, tenant_a)


def instance_url(tenant, study) -> tuple[str, Instance]:
    with tenant_scope(tenant):
        row = Instance.objects.select_related("series", "blob").get(series__study=study)
    url = (
        f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
        f"/instances/{row.sop_instance_uid}"
    )
    return url, row


# #6 Bounds on the work of one request
# ------------------------------------------------------------------------------


@pytest.fixture
def multiframe(tenant_a):
    return ingest(tenant_a, patient_id="P-FRAMES", frames=5, rows=32, columns=40)


def test_a_frame_list_of_4000_entries_is_a_400_with_the_reason(client, tenant_a, multiframe, settings):
    url, _ = instance_url(tenant_a, multiframe)
    numbers = ",".join(str(n) for n in range(1, 4001))

    for path in (f"{url}/frames/{numbers}", f"{url}/frames/{numbers}/rendered"):
        response = client.get(path, HTTP_ACCEPT=OCTETS if "rendered" not in path else "image/jpeg")

        assert response.status_code == 400, path
        body = problem(response)
        assert f"At most {settings.DICOMWEB_MAX_FRAMES_PER_REQUEST} frames per request" in str(body)
    assert events(tenant_a, EventType.INSTANCES_ACCESSED) == []  # refused before anything was read


def test_the_frame_cap_is_a_setting(client, tenant_a, multiframe, settings):
    settings.DICOMWEB_MAX_FRAMES_PER_REQUEST = 2
    url, _ = instance_url(tenant_a, multiframe)

    assert client.get(f"{url}/frames/1,2", HTTP_ACCEPT=OCTETS).status_code == 200
    assert client.get(f"{url}/frames/1,2,3", HTTP_ACCEPT=OCTETS).status_code == 400


def test_a_normal_multi_frame_retrieve_streams_each_frame_once(client, tenant_a, multiframe):
    url, row = instance_url(tenant_a, multiframe)
    with tenant_scope(tenant_a):
        pixels = pydicom.dcmread(io.BytesIO(blob_read(blob=row.blob))).pixel_array

    response = client.get(f"{url}/frames/5,1,3,1,5,5", HTTP_ACCEPT=OCTETS)

    assert response.status_code == 200
    assert response.streaming  # never a whole multipart body built in memory
    got = parts(response)
    assert [data for _, data in got] == [pixels[4].tobytes(), pixels[0].tobytes(), pixels[2].tobytes()]
    assert events(tenant_a, EventType.INSTANCES_ACCESSED)[-1].extra["kind"] == "frames"


def test_rendered_frames_are_streamed_and_deduplicated(client, tenant_a, multiframe):
    url, _ = instance_url(tenant_a, multiframe)

    response = client.get(f"{url}/frames/2,2,4/rendered", HTTP_ACCEPT="image/png")

    assert response.status_code == 200
    assert response.streaming
    assert [kind for kind, _ in parts(response)] == ["image/png", "image/png"]


@pytest.fixture
def uri_params(tenant_a):
    study = ingest(tenant_a, patient_id="P-URI-BOUNDS", rows=32, columns=48)
    _, row = instance_url(tenant_a, study)
    return {
        "requestType": "WADO",
        "studyUID": study.study_instance_uid,
        "seriesUID": row.series.series_instance_uid,
        "objectUID": row.sop_instance_uid,
    }


@pytest.mark.parametrize(
    "size", [{"rows": "50000", "columns": "50000"}, {"rows": "4097"}, {"columns": "50000"}], ids=str
)
def test_wado_uri_rows_and_columns_past_4096_are_a_400(client, tenant_a, uri_params, size):
    response = client.get("/dicomweb/north/wado", {**uri_params, **size})

    assert response.status_code == 400
    body = problem(response)
    assert "from 1 to 4096" in str(body)
    assert events(tenant_a, EventType.INSTANCES_ACCESSED) == []


def test_wado_uri_within_the_cap_still_renders(client, uri_params):
    response = client.get("/dicomweb/north/wado", {**uri_params, "rows": "64", "contentType": "image/png"})

    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (96, 64)


# #8 Pixel data that cannot be decoded
# ------------------------------------------------------------------------------


@pytest.fixture
def without_pixel_checks(monkeypatch):
    """Ingest as it was before the pixel checks (objects stored then are still in the archive)."""
    monkeypatch.setattr(dicom_parse, "_check_pixel_data", lambda *args, **kwargs: None)
    monkeypatch.setattr(dicom_parse, "_check_pixel_format", lambda *args, **kwargs: None)


def store(tenant, data: bytes) -> Instance:
    with tenant_scope(tenant):
        item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
        item.refresh_from_db()
        assert item.instance is not None, item.reason
        return Instance.objects.select_related("series__study").get(pk=item.instance_id)


BROKEN = {
    "jpeg-fragment-of-zeros": zero_jpeg_fragment,
    "bits-stored-over-allocated": bits_stored_over_allocated,
    "odd-columns-ybr-422": odd_columns_ybr_422,
}


@pytest.mark.parametrize("make", BROKEN.values(), ids=BROKEN.keys())
def test_an_undecodable_instance_is_a_400_cannot_be_rendered_at_every_door(
    client, tenant_a, without_pixel_checks, make
):
    row = store(tenant_a, make())
    study = row.series.study
    url = (
        f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
        f"/instances/{row.sop_instance_uid}"
    )
    uri = {
        "requestType": "WADO",
        "studyUID": study.study_instance_uid,
        "seriesUID": row.series.series_instance_uid,
        "objectUID": row.sop_instance_uid,
    }

    answers = {
        "rendered": client.get(f"{url}/rendered", HTTP_ACCEPT="image/jpeg"),
        "frame rendered": client.get(f"{url}/frames/1/rendered", HTTP_ACCEPT="image/png"),
        "thumbnail": client.get(f"{url}/thumbnail", HTTP_ACCEPT="image/png"),
        "wado-uri": client.get("/dicomweb/north/wado", uri),
    }

    for door, response in answers.items():
        assert response.status_code == 400, door
        assert "cannot be rendered" in str(problem(response)), door
    frames = client.get(f"{url}/frames/1", HTTP_ACCEPT=OCTETS)
    assert frames.status_code in (200, 400)  # native frames go as stored; a decode that fails is a 400
    if frames.status_code == 400:
        assert "cannot be decoded" in str(problem(frames))
    # Nothing was shown but native frames as stored: only those reads are on the audit trail.
    assert {e.extra["kind"] for e in events(tenant_a, EventType.INSTANCES_ACCESSED)} <= {"frames"}


def test_decoded_frames_of_a_jpeg_fragment_of_zeros_are_a_400(client, tenant_a, without_pixel_checks):
    row = store(tenant_a, zero_jpeg_fragment())
    study = row.series.study
    url = (
        f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
        f"/instances/{row.sop_instance_uid}"
    )

    response = client.get(f"{url}/frames/1", HTTP_ACCEPT=OCTETS)
    retrieved = client.get(url, HTTP_ACCEPT='multipart/related; type="application/dicom"')

    assert response.status_code == 400
    assert "Frame 1 cannot be decoded" in str(problem(response))
    assert retrieved.status_code == 400  # the default syntax needs it decompressed
    assert "cannot be decompressed" in str(problem(retrieved))
    as_stored = client.get(url, HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert as_stored.status_code == 200


def test_one_undecodable_instance_does_not_break_the_series_or_study_thumbnail(client, tenant_a, without_pixel_checks):
    study_uid, series_uid = generate_uid(), generate_uid()
    bad = store(tenant_a, zero_jpeg_fragment(study_uid=study_uid, series_uid=series_uid, instance_number=1))
    good = store(tenant_a, make_instance(study_uid=study_uid, series_uid=series_uid, instance_number=2))
    base = f"/dicomweb/north/studies/{study_uid}"

    for url in (f"{base}/thumbnail", f"{base}/series/{series_uid}/thumbnail"):
        response = client.get(url, HTTP_ACCEPT="image/png")
        assert response.status_code == 200, url
        assert Image.open(io.BytesIO(response.content)).format == "PNG"
    rendered = client.get(f"{base}/series/{series_uid}/rendered", HTTP_ACCEPT="image/png")
    assert rendered.status_code == 200
    assert len(parts(rendered)) == 1  # the good instance; the bad one is left out

    # The series thumbnail the pages show was made from the next instance that could be drawn.
    with tenant_scope(tenant_a):
        series = Series.objects.get(pk=bad.series_id)
        assert series.thumbnail_id is not None
        assert good.series_id == series.pk


def test_the_series_thumbnail_task_skips_an_undecodable_first_instance(tenant_a, without_pixel_checks, settings):
    study_uid, series_uid = generate_uid(), generate_uid()
    store(tenant_a, bits_stored_over_allocated(study_uid=study_uid, series_uid=series_uid, instance_number=1))
    store(tenant_a, make_instance(study_uid=study_uid, series_uid=series_uid, instance_number=2))
    with tenant_scope(tenant_a):
        series = Series.objects.get(series_instance_uid=series_uid)
        Series.objects.filter(pk=series.pk).update(thumbnail=None)

        made = services.series_thumbnail_make(series=series)

        assert made.thumbnail_id is not None
        png = blob_read(blob=made.thumbnail)
    assert Image.open(io.BytesIO(png)).format == "PNG"
