"""The upload page, the endpoint its script sends each file to, and the batch status it polls."""

from __future__ import annotations

import io
import re
import uuid
import zipfile

from django.core.files.uploadedfile import SimpleUploadedFile

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, last_event

PAGE = "/t/north/upload/"
FILES = "/t/north/upload/files/"
BATCH_RE = re.compile(r'data-batch="([0-9a-f-]{36})"')


def batch_url(batch, tenant="north"):
    return f"/t/{tenant}/ingest/batch/{batch}/"


def send(client, data, *, name="IM0001.dcm", batch=None, path="", capture=None):
    batch = batch or uuid.uuid4()
    body = {"batch": str(batch), "file": SimpleUploadedFile(name, data, content_type="application/octet-stream")}
    if path:
        body["path"] = path
    if capture is None:
        return client.post(FILES, body)
    with capture(execute=True):
        return client.post(FILES, body)


def test_the_page_carries_a_fresh_batch_and_its_script(client_for, tenant_a, technologist_a):
    client = client_for(technologist_a)

    first = client.get(PAGE)
    second = client.get(PAGE)

    assert first.status_code == 200
    html = first.content.decode()
    batch = BATCH_RE.search(html).group(1)
    assert batch != BATCH_RE.search(second.content.decode()).group(1)
    assert f'data-status-url="/t/north/ingest/batch/{batch}/"' in html
    assert 'data-post-url="/t/north/upload/files/"' in html
    assert 'src="/static/js/upload.js"' in html
    assert "webkitdirectory" in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script: the CSP allows none"
    assert "style=" not in html
    assert "the built-in scanner, which only recognises the EICAR test file" in html


def test_each_file_is_received_and_its_items_returned(
    client_for, tenant_a, technologist_a, django_capture_on_commit_callbacks
):
    client = client_for(technologist_a)
    batch = uuid.uuid4()

    good = send(
        client, make_instance(), batch=batch, path="scan/s1/IM0001.dcm", capture=django_capture_on_commit_callbacks
    )
    bad = send(
        client, b"not an image at all", name="notes.txt", batch=batch, capture=django_capture_on_commit_callbacks
    )

    assert good.status_code == bad.status_code == 201
    [stored] = good.json()["items"]
    [rejected] = bad.json()["items"]
    # Processing runs when the request's transaction commits, which the test holds until its response is made.
    assert (stored["filename"], stored["state"], stored["final"]) == ("scan/s1/IM0001.dcm", "received", False)
    assert (rejected["filename"], rejected["state"]) == ("notes.txt", "received")
    with tenant_scope(tenant_a):
        item = IngestItem.objects.get(public_id=stored["id"])
    assert item.actor == technologist_a
    assert item.source == IngestItem.Source.UPLOAD
    assert str(item.batch) == str(batch)
    assert item.source_address == "127.0.0.1"

    status = client.get(batch_url(batch))

    assert status.status_code == 200
    body = status.json()
    assert body["done"] is True
    assert [(i["id"], i["state"]) for i in body["items"]] == [(stored["id"], "stored"), (rejected["id"], "rejected")]
    assert body["items"][0]["final"] is True
    assert body["items"][1]["reason"]


def test_a_zip_with_a_path_outside_its_folder_is_one_rejected_item(client_for, tenant_a, technologist_a):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../evil.dcm", make_instance())

    response = send(client_for(technologist_a), buffer.getvalue(), name="evil.zip")

    assert response.status_code == 201
    assert [(i["filename"], i["state"], i["reason"]) for i in response.json()["items"]] == [
        ("evil.zip", "rejected", "The zip holds a path outside its folder: ../evil.dcm")
    ]
    assert last_event(tenant_a, EventType.INGEST_REJECTED).actor_user == technologist_a


def test_an_incomplete_upload_is_a_400_with_reasons(client_for, tenant_a, technologist_a):
    response = client_for(technologist_a).post(FILES, {"batch": "not-a-uuid"})

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"batch", "file"}
    with tenant_scope(tenant_a):
        assert IngestItem.objects.count() == 0


def test_files_are_only_posted(client_for, tenant_a, technologist_a):
    assert client_for(technologist_a).get(FILES).status_code == 405


def test_a_member_without_the_permission_is_refused_and_it_is_recorded(client_for, tenant_a, compliance_a):
    client = client_for(compliance_a)

    page = client.get(PAGE)
    post = send(client, make_instance())
    status = client.get(batch_url(uuid.uuid4()))

    assert page.status_code == post.status_code == status.status_code == 403
    denied = events(tenant_a, EventType.ACCESS_DENIED)
    assert [(e.actor_user, e.extra["where"]) for e in denied] == [
        (compliance_a, "UploadView"),
        (compliance_a, "UploadFilesView"),
        (compliance_a, "IngestBatchView"),
    ]
    with tenant_scope(tenant_a):
        assert IngestItem.objects.count() == 0


def test_another_tenant_cannot_reach_the_pages(client_for, tenant_a, outsider_b):
    client = client_for(outsider_b)

    assert client.get(PAGE).status_code == 404
    assert send(client, make_instance()).status_code == 404
    assert client.get(batch_url(uuid.uuid4())).status_code == 404


def test_another_tenants_batch_is_the_same_404_as_a_missing_one(
    client_for, tenant_a, tenant_b, technologist_a, outsider_b, upload
):
    theirs = upload(tenant_b, outsider_b, make_instance())[0].batch
    client = client_for(technologist_a)

    other = client.get(batch_url(theirs))
    missing = client.get(batch_url(uuid.uuid4()))

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert client_for(outsider_b).get(batch_url(theirs, tenant="south")).status_code == 200
