"""WADO-URI (PS3.18 chapter 9) and CORS on /dicomweb/."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from audit.events import EventType
from studies.models import Instance
from studies.storage.blobs import blob_read
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import events, ingest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def target(tenant_a):
    study = ingest(tenant_a, patient_id="P-URI", rows=32, columns=48)
    with tenant_scope(tenant_a):
        row = Instance.objects.select_related("blob", "series").get(series__study=study)
        data = blob_read(blob=row.blob)
    params = {"requestType": "WADO", "studyUID": study.study_instance_uid,
              "seriesUID": row.series.series_instance_uid, "objectUID": row.sop_instance_uid}  # fmt: skip
    return params, data


def test_application_dicom_is_the_stored_object(api_client_for, radiologist_a, tenant_a, target):
    params, data = target
    response = api_client_for(radiologist_a, tenant_a).get(
        "/dicomweb/north/wado", {**params, "contentType": "application/dicom"}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom"
    assert response.content == data
    assert events(tenant_a, EventType.INSTANCES_RETRIEVED)[-1].extra["count"] == 1


def test_rendered_jpeg_by_default_and_png(api_client_for, radiologist_a, tenant_a, target):
    params, _ = target
    client = api_client_for(radiologist_a, tenant_a)
    jpeg = client.get("/dicomweb/north/wado", params)
    assert jpeg["Content-Type"] == "image/jpeg"
    png = client.get("/dicomweb/north/wado", {**params, "contentType": "image/png", "rows": "16",
                                              "windowCenter": "0", "windowWidth": "500"})  # fmt: skip
    assert png["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (24, 16)
    assert events(tenant_a, EventType.INSTANCES_ACCESSED)[-1].extra["kind"] == "rendered"


def test_bad_requests(api_client_for, radiologist_a, tenant_a, target):
    params, _ = target
    client = api_client_for(radiologist_a, tenant_a)
    response = client.get("/dicomweb/north/wado", {"requestType": "WADO"})
    assert response.status_code == 400
    assert {"studyUID", "seriesUID", "objectUID"} <= set(response.json()["errors"])
    assert client.get("/dicomweb/north/wado", {**params, "requestType": "WADOX"}).status_code == 400
    assert client.get("/dicomweb/north/wado", {**params, "contentType": "image/gif"}).status_code == 406
    assert client.get("/dicomweb/north/wado", {**params, "frameNumber": "2"}).status_code == 400


def test_invisible_objects_are_the_same_404(api_client_for, tenant_b, outsider_b, auditor_a, tenant_a, target):
    params, _ = target
    south = api_client_for(outsider_b, tenant_b)
    theirs = south.get("/dicomweb/south/wado", params)
    made_up = south.get("/dicomweb/south/wado", {**params, "studyUID": "1.2.826.0.1.3680043.8.498.9"})
    assert theirs.status_code == made_up.status_code == 404
    assert theirs.json() == made_up.json()
    assert api_client_for(auditor_a, tenant_a).get("/dicomweb/north/wado", params).status_code == 404


def test_cors_for_configured_origins_only(api_client_for, radiologist_a, tenant_a, settings):
    settings.DICOMWEB_CORS_ORIGINS = ["http://viewer.example"]
    client = api_client_for(radiologist_a, tenant_a)
    preflight = client.options(
        "/dicomweb/north/studies",
        HTTP_ORIGIN="http://viewer.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    assert preflight.status_code == 204
    assert preflight["Access-Control-Allow-Origin"] == "http://viewer.example"
    assert "Authorization" in preflight["Access-Control-Allow-Headers"]
    assert "GET" in preflight["Access-Control-Allow-Methods"]
    allowed = client.get("/dicomweb/north/studies", HTTP_ORIGIN="http://viewer.example")
    assert allowed["Access-Control-Allow-Origin"] == "http://viewer.example"
    assert "Warning" in allowed["Access-Control-Expose-Headers"]
    assert "Origin" in allowed["Vary"]

    for response in (
        client.get("/dicomweb/north/studies", HTTP_ORIGIN="http://evil.example"),
        client.options("/dicomweb/north/studies", HTTP_ORIGIN="http://evil.example",
                       HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET"),
        client.get("/api/v1/t/north/members/", HTTP_ORIGIN="http://viewer.example"),
    ):  # fmt: skip
        assert "Access-Control-Allow-Origin" not in response
    settings.DICOMWEB_CORS_ORIGINS = []
    assert "Access-Control-Allow-Origin" not in client.get(
        "/dicomweb/north/studies", HTTP_ORIGIN="http://viewer.example"
    )
