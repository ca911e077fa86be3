"""The export pages: request, progress JSON, download once (then 410), and who gets 404 or 403."""

from __future__ import annotations

import io
import uuid
import zipfile

import pytest
from django.urls import reverse

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Export, Study, StudyShare
from tenants import services as tenant_services
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.tenants.helpers import membership_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def study_a(tenant_a, radiologist_a, upload) -> Study:
    batch = uuid.uuid4()
    for data in make_study(series=1, instances_per_series=3, patient_name="DOE^JANE"):
        items = upload(tenant_a, radiologist_a, data, batch=batch)
    with tenant_scope(tenant_a):
        return Study.objects.get(pk=items[0].instance.series.study_id)


def export_url(tenant, study) -> str:
    return reverse("portal:study_export", kwargs={"tenant": tenant.slug, "public_id": study.public_id})


def page(name, tenant, export) -> str:
    return reverse(f"portal:{name}", kwargs={"tenant": tenant.slug, "public_id": export.public_id})


def post_export(client, url, data, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return client.post(url, data)


def only_export(tenant) -> Export:
    with tenant_scope(tenant):
        return Export.objects.get()


def test_request_progress_download_once(
    tenant_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    client = client_for(radiologist_a)
    assert client.get(export_url(tenant_a, study_a)).status_code == 200

    response = post_export(
        client,
        export_url(tenant_a, study_a),
        {"kind": "deidentified", "modified_dates": "on"},
        django_capture_on_commit_callbacks,
    )

    export = only_export(tenant_a)
    assert response.status_code == 302
    assert response["Location"] == page("export_progress", tenant_a, export)
    progress = client.get(response["Location"])
    assert progress.status_code == 200
    assert b"js/export.js" in progress.content
    assert b"<script>" not in progress.content
    status = client.get(page("export_status", tenant_a, export)).json()
    assert (status["state"], status["percent"], status["done"], status["total"]) == ("done", 100, 3, 3)
    assert status["download_url"] == page("export_download", tenant_a, export)

    download = client.get(status["download_url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert len(archive.namelist()) == 3
    assert all(b"DOE^JANE" not in archive.read(n) for n in archive.namelist())
    assert client.get(status["download_url"]).status_code == 410
    assert client.get(page("export_status", tenant_a, export)).json()["download_url"] == ""
    with tenant_scope(tenant_a):
        phases = [
            e.extra["phase"]
            for e in AuditEvent.objects.filter(event_type=EventType.STUDY_EXPORTED).order_by("sequence")
        ]
    assert phases == ["requested", "downloaded"]


def test_other_user_and_other_tenant_get_404(
    tenant_a, tenant_b, radiologist_a, admin_b, make_member, study_a, client_for, django_capture_on_commit_callbacks
):
    post_export(
        client_for(radiologist_a),
        export_url(tenant_a, study_a),
        {"kind": "deidentified"},
        django_capture_on_commit_callbacks,
    )
    export = only_export(tenant_a)
    other = client_for(make_member(tenant_a, Role.RADIOLOGIST, "north-rad2"))
    missing = Export(public_id=uuid.uuid4())
    for name in ("export_progress", "export_status", "export_download"):
        assert other.get(page(name, tenant_a, export)).status_code == 404
        assert other.get(page(name, tenant_a, missing)).status_code == 404
        # another tenant's member, with the URL of tenant B or of tenant A
        assert client_for(admin_b).get(page(name, tenant_b, export)).status_code == 404
        assert client_for(admin_b).get(page(name, tenant_a, export)).status_code == 404
    # still downloadable by its owner: the refusals did not consume it
    assert client_for(radiologist_a).get(page("export_download", tenant_a, export)).status_code == 200


def test_member_who_cannot_see_the_study_gets_404(tenant_a, make_member, study_a, client_for):
    referrer = client_for(make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-ref"))
    assert referrer.get(export_url(tenant_a, study_a)).status_code == 404
    assert referrer.post(export_url(tenant_a, study_a), {"kind": "deidentified"}).status_code == 404


def test_identified_export_without_permission_is_403_and_audited(tenant_a, technologist_a, study_a, client_for):
    client = client_for(technologist_a)
    response = client.post(
        export_url(tenant_a, study_a), {"kind": "identified", "purpose": "Teaching", "recipient": "Dr X"}
    )
    assert response.status_code == 403
    with tenant_scope(tenant_a):
        denied = AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED, actor_user=technologist_a)
        assert denied.count() == 1
        assert not Export.objects.exists()


def test_identified_export_by_a_radiologist_is_a_disclosure(
    tenant_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    response = post_export(
        client_for(radiologist_a),
        export_url(tenant_a, study_a),
        {"kind": "identified", "purpose": "Tumour board", "recipient": "Dr Who"},
        django_capture_on_commit_callbacks,
    )
    assert response.status_code == 302
    with tenant_scope(tenant_a):
        event = AuditEvent.objects.get(event_type=EventType.DISCLOSURE_EXPORTED)
    assert (event.extra["recipient"], event.extra["purpose"]) == ("Dr Who", "Tumour board")


def test_identified_export_needs_purpose_and_recipient(tenant_a, radiologist_a, study_a, client_for):
    response = client_for(radiologist_a).post(export_url(tenant_a, study_a), {"kind": "identified"})
    assert response.status_code == 400
    assert b"purpose and a recipient" in response.content


def test_search_result_export(tenant_a, radiologist_a, upload, client_for, django_capture_on_commit_callbacks):
    upload(tenant_a, radiologist_a, make_instance(patient_id="A1", accession="ACC-1", modality="MR"))
    upload(tenant_a, radiologist_a, make_instance(patient_id="B2", accession="ACC-2", modality="MR"))
    upload(tenant_a, radiologist_a, make_instance(patient_id="C3", accession="ACC-3", modality="CT"))
    client = client_for(radiologist_a)
    url = reverse("portal:export_search", kwargs={"tenant": tenant_a.slug})
    assert client.get(url).status_code == 200

    response = post_export(client, url, {"modality": "MR", "kind": "deidentified"}, django_capture_on_commit_callbacks)

    assert response.status_code == 302
    export = only_export(tenant_a)
    with tenant_scope(tenant_a):
        assert export.studies.count() == 2
    download = client.get(page("export_download", tenant_a, export))
    assert len(zipfile.ZipFile(io.BytesIO(download.content)).namelist()) == 2


# Issue 8 #4: the download asks again whether its owner may still have every study in it


def _share(client, tenant, study, grantee) -> None:
    url = reverse("portal:study_access", kwargs={"tenant": tenant.slug, "public_id": study.public_id})
    assert client.post(url, {"action": "member", "grantee": grantee.username, "days": 2}).status_code == 302


def _role_change(tenant, admin, user, role) -> None:
    with tenant_scope(tenant):
        tenant_services.membership_change_role(actor=admin, membership=membership_of(user, tenant), role=role)


def _refusals(tenant, user, event_type) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event_type, actor_user=user, outcome=Outcome.MINOR_FAILURE))


@pytest.fixture
def shared_export(tenant_a, radiologist_a, study_a, make_member, client_for, django_capture_on_commit_callbacks):
    """A referring physician who sees `study_a` only through a share asked for a de-identified export of it."""
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-ref")
    _share(client_for(radiologist_a), tenant_a, study_a, referrer)
    client = client_for(referrer)
    response = post_export(client, export_url(tenant_a, study_a), {"kind": "deidentified"},
                           django_capture_on_commit_callbacks)  # fmt: skip
    assert response.status_code == 302
    export = only_export(tenant_a)
    assert export.state == Export.State.DONE
    return referrer, client, export


def test_share_in_force_the_zip_downloads(tenant_a, shared_export):
    referrer, client, export = shared_export

    download = client.get(page("export_download", tenant_a, export))

    assert download.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(download.content)).namelist()) == 3
    assert _refusals(tenant_a, referrer, EventType.STUDY_EXPORTED) == []


def test_share_revoked_the_download_is_a_404_and_recorded(tenant_a, radiologist_a, study_a, shared_export, client_for):
    referrer, client, export = shared_export
    with tenant_scope(tenant_a):
        share = StudyShare.objects.get(grantee=referrer)
    revoke = reverse(
        "portal:share_revoke",
        kwargs={"tenant": tenant_a.slug, "public_id": study_a.public_id, "share_id": share.public_id},
    )
    assert client_for(radiologist_a).post(revoke).status_code == 302

    download = client.get(page("export_download", tenant_a, export))
    missing = client.get(page("export_download", tenant_a, Export(public_id=uuid.uuid4())))

    assert download.status_code == missing.status_code == 404
    assert download.content == missing.content
    [refused] = _refusals(tenant_a, referrer, EventType.STUDY_EXPORTED)
    assert refused.extra["phase"] == "download refused"
    assert refused.target_id == str(export.public_id)
    assert ("study", study_a.study_instance_uid) in {(p["type"], p["id"]) for p in refused.participants}
    with tenant_scope(tenant_a):
        export.refresh_from_db()
    assert export.downloaded_at is None  # nothing left: the zip was not read


def test_role_without_images_the_share_no_longer_opens_the_download(tenant_a, admin_a, shared_export):
    """The share is still in force, but the person's role no longer sees images."""
    referrer, client, export = shared_export
    _role_change(tenant_a, admin_a, referrer, Role.TENANT_ADMIN)

    assert client.get(page("export_download", tenant_a, export)).status_code == 404
    assert len(_refusals(tenant_a, referrer, EventType.STUDY_EXPORTED)) == 1


def test_identified_export_after_the_role_changed_is_a_404_and_recorded(
    tenant_a, admin_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    client = client_for(radiologist_a)
    post_export(client, export_url(tenant_a, study_a),
                {"kind": "identified", "purpose": "Tumour board", "recipient": "Dr Who"},
                django_capture_on_commit_callbacks)  # fmt: skip
    export = only_export(tenant_a)
    _role_change(tenant_a, admin_a, radiologist_a, Role.COMPLIANCE_OFFICER)

    download = client.get(page("export_download", tenant_a, export))

    assert download.status_code == 404
    assert b"DICM" not in download.content
    [refused] = _refusals(tenant_a, radiologist_a, EventType.DISCLOSURE_EXPORTED)
    assert refused.extra["phase"] == "download refused"
    assert refused.outcome_description == "the access this export needs is gone"


def test_identified_export_after_losing_only_the_disclosure_permission_is_a_404(
    tenant_a, admin_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    """A technologist still sees every study, but may not take identified data out."""
    client = client_for(radiologist_a)
    post_export(client, export_url(tenant_a, study_a),
                {"kind": "identified", "purpose": "Tumour board", "recipient": "Dr Who"},
                django_capture_on_commit_callbacks)  # fmt: skip
    export = only_export(tenant_a)
    _role_change(tenant_a, admin_a, radiologist_a, Role.TECHNOLOGIST)

    assert client.get(page("export_download", tenant_a, export)).status_code == 404
    assert len(_refusals(tenant_a, radiologist_a, EventType.DISCLOSURE_EXPORTED)) == 1


def test_share_revoked_the_progress_page_and_its_status_are_404_and_recorded(
    tenant_a, radiologist_a, study_a, shared_export, client_for
):
    """The progress page and the status it polls ask again too, like the download (issue 8 #4)."""
    referrer, client, export = shared_export
    assert client.get(page("export_progress", tenant_a, export)).status_code == 200
    assert client.get(page("export_status", tenant_a, export)).status_code == 200
    with tenant_scope(tenant_a):
        share = StudyShare.objects.get(grantee=referrer)
    revoke = reverse(
        "portal:share_revoke",
        kwargs={"tenant": tenant_a.slug, "public_id": study_a.public_id, "share_id": share.public_id},
    )
    assert client_for(radiologist_a).post(revoke).status_code == 302

    progress = client.get(page("export_progress", tenant_a, export))
    status = client.get(page("export_status", tenant_a, export))
    missing = client.get(page("export_progress", tenant_a, Export(public_id=uuid.uuid4())))

    assert progress.status_code == status.status_code == missing.status_code == 404
    assert progress.content == missing.content
    phases = [event.extra["phase"] for event in _refusals(tenant_a, referrer, EventType.STUDY_EXPORTED)]
    assert sorted(phases) == ["progress refused", "status refused"]
