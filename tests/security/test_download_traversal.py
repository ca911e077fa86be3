"""Path traversal in downloads (SECURITY.md G10, ASVS V5.3.2): every view that serves stored bytes (the export zip,
the series thumbnail, a training certificate, DICOMweb's retrieve, rendered, thumbnail and frames, WADO-URI) finds
them through a database row by an identifier, never through a path built from the request. Identifiers crafted with
parent references, encoded and double-encoded, backslashes, absolute paths, NUL, and a real blob's storage name are
each a 400 or 404 that carries nothing of a file placed beside the stores; the stores themselves refuse a name that
leaves their folder, so a row pointing outside would not be read either."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import storages

from studies.models import Blob, Series
from studies.storage.blobs import blob_read
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import JSON, ingest

pytestmark = pytest.mark.django_db(transaction=True)  # ingestion runs on commit

CANARY = b"ENCLAVE-TRAVERSAL-CANARY-7f3a"


@pytest.fixture
def canaries() -> list[Path]:
    """The same secret in a file beside each store's folder and one level further up (where ../ would reach)."""
    placed = []
    for store in ("blobs", "replica", "quarantine"):
        root = Path(storages[store].location).resolve()
        for folder in (root.parent, root.parent.parent):
            path = folder / "canary.txt"
            if not path.exists():
                path.write_bytes(CANARY)
                placed.append(path)
    yield placed
    for path in placed:
        path.unlink(missing_ok=True)


def hostile_ids(blob_name: str, canary: Path) -> list[str]:
    return [
        "../../canary.txt",
        "..%2F..%2Fcanary.txt",
        "%2e%2e%2f%2e%2e%2fcanary.txt",
        "%252e%252e%252fcanary.txt",
        "..%5C..%5Ccanary.txt",
        "....%2F%2F....%2F%2Fcanary.txt",
        "%c0%ae%c0%ae%2Fcanary.txt",
        "canary.txt%00.png",
        "%2Fetc%2Fpasswd",
        str(canary).replace("/", "%2F"),
        blob_name.replace("/", "%2F"),
        "..",
        ".",
    ]


def test_crafted_identifiers_in_every_download_are_400_or_404_and_read_nothing_outside(
    tenant_a, radiologist_a, client_for, api_client_for, canaries
):
    study = ingest(tenant_a, patient_id="TRAV-1", patient_name="TRAVERSAL^TEST", rows=16, columns=16)
    with tenant_scope(tenant_a):
        series = Series.objects.get(study=study)
        instance = series.instances.select_related("blob").get()
        blob_name = instance.blob.storage_name
    st, se, sop = study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid
    page, api = client_for(radiologist_a), api_client_for(radiologist_a, tenant_a)

    templates = [
        (page, "/t/north/exports/{x}/download/", {}),
        (page, "/t/north/series/{x}/thumbnail.png", {}),
        (page, "/t/north/training/completions/{x}/evidence/", {}),
        (page, "/t/north/ingest/batch/{x}/", {}),
        (api, "/dicomweb/north/studies/{x}", {"HTTP_ACCEPT": "multipart/related; type=application/dicom"}),
        (api, "/dicomweb/north/studies/{x}/thumbnail", {"HTTP_ACCEPT": "image/png"}),
        (api, "/dicomweb/north/studies/{x}/rendered", {"HTTP_ACCEPT": "image/png"}),
        (api, f"/dicomweb/north/studies/{st}/series/{{x}}/instances/{sop}", {}),
        (api, f"/dicomweb/north/studies/{st}/series/{se}/instances/{{x}}", {}),
        (api, f"/dicomweb/north/studies/{st}/series/{se}/instances/{{x}}/frames/1", {}),
        (api, f"/dicomweb/north/studies/{st}/series/{se}/instances/{sop}/frames/{{x}}", {}),
        (api, f"/dicomweb/north/studies/{st}/series/{se}/instances/{{x}}/metadata", {"HTTP_ACCEPT": JSON}),
        (api, f"/dicomweb/north/wado?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID={{x}}", {}),
        (api, f"/dicomweb/north/wado?requestType=WADO&studyUID={{x}}&seriesUID={se}&objectUID={sop}", {}),
    ]
    answered = 0
    for client, template, headers in templates:
        for hostile in hostile_ids(blob_name, canaries[0]):
            response = client.get(template.format(x=hostile), **headers)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            assert response.status_code in (400, 404), (template, hostile, response.status_code)
            assert CANARY not in body
            assert b"root:" not in body  # /etc/passwd
            answered += 1
    assert answered == len(templates) * 13

    # The control: the same routes with the real identifiers serve the stored bytes, so the refusals above are
    # the identifiers' doing.
    real = api.get(f"/dicomweb/north/studies/{st}/series/{se}/instances/{sop}/metadata", HTTP_ACCEPT=JSON)
    assert real.status_code == 200
    assert api.get(f"/dicomweb/north/studies/{st}/thumbnail", HTTP_ACCEPT="image/png").status_code == 200


def test_the_stores_refuse_names_that_leave_their_folder(tenant_a, canaries):
    for store in ("blobs", "replica", "quarantine"):
        for name in ("../canary.txt", "../../canary.txt", str(canaries[0])):
            with pytest.raises(SuspiciousFileOperation):
                storages[store].open(name, "rb")
    study = ingest(tenant_a, patient_id="TRAV-2", rows=16, columns=16)
    with tenant_scope(tenant_a):
        blob = Blob.objects.get(instance__series__study=study)
        blob.storage_name = "../../canary.txt"  # a row pointing outside (never saved): reading it is refused
        with pytest.raises(SuspiciousFileOperation):
            blob_read(blob=blob)


def test_a_nul_in_the_path_or_query_is_a_400_before_any_view(api_client_for, radiologist_a, tenant_a, client_for):
    api, page = api_client_for(radiologist_a, tenant_a), client_for(radiologist_a)
    for client, path in (
        (api, "/dicomweb/north/studies/1.2.3%00"),
        (api, "/dicomweb/north/studies?PatientID=A%00B"),
        (api, "/api/v1/t/north/audit-events/?q=%00"),
        (page, "/t/north/studies/?q=x%00"),
        (page, "/t/north/exports/%00/download/"),
    ):
        response = client.get(path)
        assert response.status_code == 400, path
        if path.startswith(("/api/", "/dicomweb/")):
            assert response.json()["code"] == "nul_character"
        else:
            assert b"NUL character" in response.content
    assert api.get("/dicomweb/north/studies?PatientID=A00B").status_code in (200, 204)  # "00" alone is fine
