"""WADO-RS: retrieve (bytes checked), metadata, frames, rendered, thumbnails, visibility, audit and folding."""

from __future__ import annotations

import io
from datetime import timedelta
from email import message_from_bytes, policy

import numpy as np
import pydicom
import pytest
from django.utils import timezone
from PIL import Image

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from studies.models import Instance, ReadTally, StudyShare
from studies.services.reads import read_tallies_flush
from studies.storage.blobs import blob_read
from tenants import access
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import JSON, events, ingest, ingest_files

pytestmark = pytest.mark.django_db(transaction=True)
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


def parts(response) -> list[tuple[str, bytes]]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    raw = f"Content-Type: {response['Content-Type']}\r\n\r\n".encode() + body
    message = message_from_bytes(raw, policy=policy.HTTP)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in message.iter_parts()]


@pytest.fixture
def study(tenant_a):
    return ingest(tenant_a, patient_id="P-WADO", frames=3, rows=32, columns=40)


@pytest.fixture
def client(api_client_for, radiologist_a, tenant_a):
    return api_client_for(radiologist_a, tenant_a)


def stored(tenant, study) -> list[tuple[Instance, bytes]]:
    with tenant_scope(tenant):
        rows = list(Instance.objects.filter(series__study=study).select_related("blob", "series"))
        return [(row, blob_read(blob=row.blob)) for row in rows]


def test_retrieve_study_series_instance_streams_the_stored_bytes(client, tenant_a, study, radiologist_a):
    ((row, plaintext),) = stored(tenant_a, study)
    base = f"/dicomweb/north/studies/{study.study_instance_uid}"
    for url in (base, f"{base}/series/{row.series.series_instance_uid}",
                f"{base}/series/{row.series.series_instance_uid}/instances/{row.sop_instance_uid}"):  # fmt: skip
        response = client.get(url, HTTP_ACCEPT=DICOM_MULTIPART)
        assert response.status_code == 200, url
        assert response.streaming
        assert response["Content-Type"].startswith(DICOM_MULTIPART + "; boundary=")
        assert parts(response) == [("application/dicom", plaintext)]
    retrieved = events(tenant_a, EventType.INSTANCES_RETRIEVED)
    assert len(retrieved) == 3
    assert retrieved[-1].actor_user == radiologist_a
    assert retrieved[-1].extra["count"] == 1
    assert {(p["type"], p["id"]) for p in retrieved[-1].participants} == {
        ("patient", "P-WADO"),
        ("study", study.study_instance_uid),
    }


def test_a_whole_study_is_one_part_per_instance(client, tenant_a):
    files = [make_instance(study_uid="1.2.826.0.1.3680043.8.498.77", series_uid=f"1.2.826.0.1.3680043.8.498.7{s}",
                           instance_number=i, series_number=s) for s in (1, 2) for i in (1, 2)]  # fmt: skip
    ingest_files(tenant_a, files)
    response = client.get("/dicomweb/north/studies/1.2.826.0.1.3680043.8.498.77", HTTP_ACCEPT=DICOM_MULTIPART)
    got = [data for _, data in parts(response)]
    assert sorted(got) == sorted(files)
    assert events(tenant_a, EventType.INSTANCES_RETRIEVED)[-1].extra["count"] == 4


def test_transfer_syntax_negotiation(client, tenant_a):
    study = ingest(tenant_a, transfer_syntax=pydicom.uid.RLELossless)
    url = f"/dicomweb/north/studies/{study.study_instance_uid}"
    ((_, plaintext),) = stored(tenant_a, study)
    as_stored = parts(client.get(url, HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*"))
    assert as_stored == [("application/dicom", plaintext)]
    (default,) = parts(client.get(url, HTTP_ACCEPT=DICOM_MULTIPART))
    ds = pydicom.dcmread(io.BytesIO(default[1]))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(io.BytesIO(plaintext)).pixel_array)
    jpeg = f"{DICOM_MULTIPART}; transfer-syntax={pydicom.uid.JPEGBaseline8Bit}"
    assert client.get(url, HTTP_ACCEPT=jpeg).status_code == 406
    assert client.get(url, HTTP_ACCEPT="image/png").status_code == 406


def test_metadata_without_pixel_data(client, tenant_a, study):
    response = client.get(f"/dicomweb/north/studies/{study.study_instance_uid}/metadata", HTTP_ACCEPT=JSON)
    assert response.status_code == 200
    assert response["Content-Type"] == JSON
    (item,) = response.json()
    assert item["00100020"]["Value"] == ["P-WADO"]
    assert item["00280008"]["Value"] == [3]
    assert "7FE00010" not in item
    assert client.get(f"/dicomweb/north/studies/{study.study_instance_uid}/metadata",
                      HTTP_ACCEPT="application/dicom+xml").status_code == 406  # fmt: skip
    accessed = events(tenant_a, EventType.INSTANCES_ACCESSED)
    assert accessed[-1].extra["kind"] == "metadata"


def test_frames_are_the_pixel_data(client, tenant_a, study):
    ((row, plaintext),) = stored(tenant_a, study)
    pixels = pydicom.dcmread(io.BytesIO(plaintext)).pixel_array
    url = (f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
           f"/instances/{row.sop_instance_uid}/frames/1,3")  # fmt: skip
    response = client.get(url, HTTP_ACCEPT='multipart/related; type="application/octet-stream"')
    assert response.status_code == 200
    got = parts(response)
    assert [t for t, _ in got] == ["application/octet-stream"] * 2
    assert got[0][1] == pixels[0].tobytes()
    assert got[1][1] == pixels[2].tobytes()
    assert client.get(url, HTTP_ACCEPT='multipart/related; type="image/jpeg"').status_code == 406
    assert client.get(url.replace("1,3", "4")).status_code == 400
    assert client.get(url.replace("1,3", "0")).status_code == 400


def test_compressed_frames_go_as_stored_or_decoded(client, tenant_a):
    study = ingest(tenant_a, transfer_syntax=pydicom.uid.JPEGBaseline8Bit, bits=8)
    ((row, plaintext),) = stored(tenant_a, study)
    ds = pydicom.dcmread(io.BytesIO(plaintext))
    url = (f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
           f"/instances/{row.sop_instance_uid}/frames/1")  # fmt: skip
    ((kind, data),) = parts(client.get(url, HTTP_ACCEPT='multipart/related; type="image/jpeg"'))
    assert kind == "image/jpeg"
    assert data == next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ((kind, data),) = parts(client.get(url, HTTP_ACCEPT='multipart/related; type="application/octet-stream"'))
    assert kind == "application/octet-stream"
    assert len(data) == 64 * 64


def test_rendered_png_and_jpeg_with_window_and_viewport(client, tenant_a, study):
    ((row, _),) = stored(tenant_a, study)
    base = (f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
            f"/instances/{row.sop_instance_uid}")  # fmt: skip
    png = client.get(f"{base}/rendered", {"viewport": "20,20", "window": "0,400,LINEAR"}, HTTP_ACCEPT="image/png")
    assert png.status_code == 200
    assert png["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (20, 16)  # 40 x 32 scaled to fit, aspect kept
    jpeg = client.get(f"{base}/rendered")
    assert jpeg["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (40, 32)
    frame = client.get(f"{base}/frames/2/rendered", HTTP_ACCEPT="image/png")
    assert frame.status_code == 200
    several = client.get(f"{base}/frames/1,2/rendered", HTTP_ACCEPT="image/png")
    assert [t for t, _ in parts(several)] == ["image/png", "image/png"]
    series = client.get(f"/dicomweb/north/studies/{study.study_instance_uid}/rendered", HTTP_ACCEPT="image/jpeg")
    assert [t for t, _ in parts(series)] == ["image/jpeg"]
    assert client.get(f"{base}/rendered", HTTP_ACCEPT="image/gif").status_code == 406
    assert client.get(f"{base}/rendered", {"window": "1"}).status_code == 400
    assert client.get(f"{base}/rendered", {"viewport": "0,10"}).status_code == 400


def test_thumbnails(client, tenant_a, study):
    ((row, _),) = stored(tenant_a, study)
    for url in (
        f"/dicomweb/north/studies/{study.study_instance_uid}/thumbnail",
        f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}/thumbnail",
    ):
        response = client.get(url)
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"
        assert max(Image.open(io.BytesIO(response.content)).size) == 128


def routes(study, row) -> list[str]:
    base = f"/dicomweb/north/studies/{study}"
    series = f"{base}/series/{row.series.series_instance_uid}" if row else f"{base}/series/1.2.3"
    instance = f"{series}/instances/{row.sop_instance_uid}" if row else f"{series}/instances/1.2.3.4"
    return [base, series, instance, f"{base}/metadata", f"{series}/metadata", f"{instance}/metadata",
            f"{instance}/frames/1", f"{base}/rendered", f"{instance}/rendered", f"{instance}/frames/1/rendered",
            f"{base}/thumbnail", f"{series}/thumbnail", f"{instance}/thumbnail"]  # fmt: skip


def test_another_tenants_study_is_the_same_404_as_a_made_up_one(api_client_for, tenant_a, tenant_b, outsider_b, study):
    ((row, _),) = stored(tenant_a, study)
    south = api_client_for(outsider_b, tenant_b)
    real = [south.get(u.replace("/north/", "/south/")) for u in routes(study.study_instance_uid, row)]
    fake = [south.get(u.replace("/north/", "/south/")) for u in routes("1.2.826.0.1.3680043.8.498.1", None)]
    for theirs, made_up in zip(real, fake, strict=True):
        assert theirs.status_code == made_up.status_code == 404
        assert theirs.json() == made_up.json()
    assert events(tenant_b, EventType.INSTANCES_RETRIEVED) == []


@pytest.mark.parametrize("persona", ["admin_a", "compliance_a", "auditor_a"])
def test_no_pixels_for_admins_compliance_and_auditors(request, api_client_for, tenant_a, study, persona):
    ((row, _),) = stored(tenant_a, study)
    client = api_client_for(request.getfixturevalue(persona), tenant_a)
    for url in routes(study.study_instance_uid, row):
        assert client.get(url).status_code == 404, url


def test_a_referring_physician_and_an_expired_share(api_client_for, make_member, tenant_a, radiologist_a):
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-doe")
    referrer.first_name, referrer.last_name = "John", "Doe"
    referrer.save(update_fields=["first_name", "last_name"])
    theirs = ingest(tenant_a, referring="DOE^JOHN")
    other = ingest(tenant_a, referring="ROE^RICHARD")
    client = api_client_for(referrer, tenant_a)
    assert client.get(f"/dicomweb/north/studies/{theirs.study_instance_uid}").status_code == 200
    url = f"/dicomweb/north/studies/{other.study_instance_uid}"
    assert client.get(url).status_code == 404
    with tenant_scope(tenant_a):
        share = StudyShare.objects.create(study=other, grantee=referrer, granted_by=radiologist_a,
                                          expires_at=timezone.now() + timedelta(hours=1))  # fmt: skip
        access.object_grant(perm="studies.view_study", user=referrer, obj=other)
    assert client.get(url).status_code == 200
    assert client.get(f"{url}/metadata").status_code == 200
    with tenant_scope(tenant_a):
        StudyShare.objects.filter(pk=share.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(url).status_code == 404
    assert client.get(f"{url}/metadata").status_code == 404


def test_repeated_frame_reads_are_folded_never_dropped(client, tenant_a, study, radiologist_a, settings):
    ((row, _),) = stored(tenant_a, study)
    url = (f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
           f"/instances/{row.sop_instance_uid}")  # fmt: skip
    before = len(events(tenant_a, EventType.INSTANCES_ACCESSED))
    for n in (1, 2, 3, 1, 2):
        assert client.get(f"{url}/frames/{n}").status_code == 200
    assert client.get(f"{url}/rendered").status_code == 200
    accessed = events(tenant_a, EventType.INSTANCES_ACCESSED)
    assert len(accessed) == before + 1  # the first read; five more are counted, not yet written
    with tenant_scope(tenant_a):
        tally = ReadTally.objects.get(user=radiologist_a, study=study)
    assert tally.folded == 5
    assert tally.first_sequence == accessed[-1].sequence

    with tenant_scope(tenant_a):
        assert read_tallies_flush() == 0  # the window is still open
        assert read_tallies_flush(now=timezone.now() + timedelta(seconds=settings.READ_AUDIT_FOLD_SECONDS + 1)) == 1
        assert not ReadTally.objects.exists()
    summary = events(tenant_a, EventType.INSTANCES_ACCESSED)[-1]
    assert summary.extra["folded_reads"] == 5
    assert summary.outcome_description == "5 further reads folded"
    assert summary.actor_user == radiologist_a
    assert {p["id"] for p in summary.participants} == {"P-WADO", study.study_instance_uid}

    # A read after a window has passed closes it and opens the next one.
    client.get(f"{url}/frames/1")
    client.get(f"{url}/frames/2")
    with tenant_scope(tenant_a):
        ReadTally.objects.update(window_started_at=timezone.now() - timedelta(hours=1))
    client.get(f"{url}/frames/3")
    accessed = events(tenant_a, EventType.INSTANCES_ACCESSED)
    assert accessed[-2].extra["folded_reads"] == 1
    assert accessed[-1].extra["kind"] == "frames"


def test_a_read_of_a_study_the_caller_cannot_see_is_recorded_as_a_failure(
    tenant_a, tenant_b, radiologist_a, outsider_b, api_client_for
):
    import uuid

    from audit.events import EventType
    from audit.models import AuditEvent
    from studies.dicom.synthetic import make_instance
    from studies.models import IngestItem
    from studies.services import ingest_receive
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant_a):
        item = ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=make_instance())
        item.refresh_from_db()
        uid = item.instance.series.study.study_instance_uid
    response = api_client_for(outsider_b, tenant_b).get(f"/dicomweb/south/studies/{uid}/metadata")
    made_up = api_client_for(outsider_b, tenant_b).get("/dicomweb/south/studies/1.2.3.4.5/metadata")
    assert response.status_code == made_up.status_code == 404
    assert response.content == made_up.content
    with tenant_scope(tenant_b):
        refused = AuditEvent.objects.filter(event_type=EventType.INSTANCES_ACCESSED, outcome=4).order_by("sequence")
        assert [e.participants[0]["id"] for e in refused] == [uid, "1.2.3.4.5"]
        assert refused[0].actor_user == outsider_b
        assert "name" not in refused[0].participants[0]  # nothing about the patient
    with tenant_scope(tenant_a):
        assert not AuditEvent.objects.filter(event_type=EventType.INSTANCES_ACCESSED).exists()


def _prepared_retrievals() -> list[str]:
    """The connection's prepared statements that read instances by their study (the retrieval's; a thumbnail's,
    prepared on the same connection when the test's instances were stored, reads them by their series)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s AND statement LIKE %s",
            ['%FROM "studies_instance"%', '%"study_instance_uid" = $%'],
        )
        return [statement for (statement,) in cursor.fetchall()]


def test_a_retrieval_is_prepared_once_per_connection_and_still_scoped(
    client, api_client_for, make_member, tenant_a, tenant_b, outsider_b, study, radiologist_a
):
    """A retrieval's statement (studies.selectors.storage.retrieval_rows: the study, its instances and their blobs)
    is sent as a prepared statement of the connection (tenants.db) when its conditions are equalities: prepared by
    the first retrieval, only executed by the next ones, PostgreSQL's generic plan after five; the same bytes every
    time. Another tenant's radiologist, on the same connection and statement, still gets the 404 of a made-up study,
    and a referring physician's retrieval (a share's time range) is not prepared, with the same answer as before."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    ((row, plaintext),) = stored(tenant_a, study)
    series = f"/dicomweb/north/studies/{study.study_instance_uid}/series/{row.series.series_instance_uid}"
    assert _prepared_retrievals() == []
    for _ in range(7):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(series, HTTP_ACCEPT=DICOM_MULTIPART)
            assert parts(response) == [("application/dicom", plaintext)]
        (retrieval,) = [q["sql"] for q in queries.captured_queries if 'FROM "studies_instance"' in q["sql"]]
        assert study.study_instance_uid in retrieval  # logged as written, with its values
    (prepared,) = _prepared_retrievals()  # prepared once, executed seven times
    body = prepared.split("; EXECUTE ")[0]  # the string that prepared it: PREPARE ... AS <statement>; EXECUTE ...
    assert '"study_instance_uid" = $' in body
    assert study.study_instance_uid not in body
    assert len(events(tenant_a, EventType.INSTANCES_RETRIEVED)) == 7

    south = api_client_for(outsider_b, tenant_b)
    theirs = south.get(series.replace("/north/", "/south/"), HTTP_ACCEPT=DICOM_MULTIPART)
    made_up = south.get("/dicomweb/south/studies/1.2.826.0.1.3680043.8.498.1/series/1.2.3", HTTP_ACCEPT=DICOM_MULTIPART)
    assert theirs.status_code == made_up.status_code == 404
    assert theirs.json() == made_up.json()
    assert events(tenant_b, EventType.INSTANCES_RETRIEVED) == []
    assert len(_prepared_retrievals()) == 1  # the same statement, run in tenant B's scope

    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-doe")
    shared = api_client_for(referrer, tenant_a)
    assert shared.get(series, HTTP_ACCEPT=DICOM_MULTIPART).status_code == 404
    with tenant_scope(tenant_a):
        StudyShare.objects.create(study=study, grantee=referrer, granted_by=radiologist_a,
                                  expires_at=timezone.now() + timedelta(hours=1))  # fmt: skip
        access.object_grant(perm="studies.view_study", user=referrer, obj=study)
    for _ in range(2):
        assert parts(shared.get(series, HTTP_ACCEPT=DICOM_MULTIPART)) == [("application/dicom", plaintext)]
    assert len(_prepared_retrievals()) == 1  # the share's expiry is a range: planned for its value each time
