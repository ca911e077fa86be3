"""Password-encrypted export bundles (SECURITY.md C5): an AES-256 ZIP whose password is shown once to the
requester, kept nowhere in clear, and without which the bundle does not open; the audit records Encrypted."""

from __future__ import annotations

import io
import uuid
import zipfile

import pydicom
import pytest
import pyzipper
from django.urls import reverse

from audit.events import EventType
from audit.models import AuditEvent
from studies.dicom.synthetic import make_study
from studies.models import Blob, Export, Study
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db


@pytest.fixture
def study_a(tenant_a, radiologist_a, upload) -> Study:
    batch = uuid.uuid4()
    for data in make_study(series=1, instances_per_series=2, patient_name="DOE^JANE", patient_id="MRN-C5"):
        items = upload(tenant_a, radiologist_a, data, batch=batch)
    with tenant_scope(tenant_a):
        return Study.objects.get(pk=items[0].instance.series.study_id)


def _export_url(tenant, study) -> str:
    return reverse("portal:study_export", kwargs={"tenant": tenant.slug, "public_id": study.public_id})


def _page(name, tenant, export) -> str:
    return reverse(f"portal:{name}", kwargs={"tenant": tenant.slug, "public_id": export.public_id})


def _password(response) -> str:
    body = response.content.decode()
    start = body.index('<code id="bundle-password">') + len('<code id="bundle-password">')
    return body[start : body.index("</code>", start)]


def test_the_bundle_opens_only_with_the_password_shown_once(
    tenant_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    client = client_for(radiologist_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_export_url(tenant_a, study_a), {"kind": "deidentified", "encrypted": "on"})
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    password = _password(response)
    assert len(password) == 27  # four groups of six and their dashes
    with tenant_scope(tenant_a):
        export = Export.objects.get()
        assert export.encrypted
        assert export.state == Export.State.DONE
        assert export.password_blob is None  # used by the job, then shredded
        assert Blob.objects.filter(kind=Blob.Kind.EXPORT).count() == 1  # the bundle only
        trail = list(AuditEvent.objects.filter(event_type=EventType.STUDY_EXPORTED))
    # Shown once: the progress page and its status never show it again.
    progress = client.get(_page("export_progress", tenant_a, export)).content.decode()
    assert password not in progress
    assert password not in client.get(_page("export_status", tenant_a, export)).content.decode()

    bundle = client.get(_page("export_download", tenant_a, export)).content
    with pyzipper.AESZipFile(io.BytesIO(bundle)) as archive:
        names = archive.namelist()
        assert len(names) == 2
        assert all(info.flag_bits & 0x1 for info in archive.infolist())  # every member encrypted
        with pytest.raises(RuntimeError):
            archive.read(names[0])  # no password
        archive.setpassword(b"not-the-password")
        with pytest.raises(RuntimeError):
            archive.read(names[0])
        archive.setpassword(password.encode())
        files = [archive.read(name) for name in names]
    with zipfile.ZipFile(io.BytesIO(bundle)) as plain, pytest.raises((NotImplementedError, RuntimeError)):
        plain.read(names[0])  # the standard library cannot open AES members at all
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        assert "DOE" not in str(ds.PatientName)
    assert b"DOE^JANE" not in bundle
    # The trail says the bundle was encrypted, at the request and at the download, and never holds the password.
    with tenant_scope(tenant_a):
        trail = list(AuditEvent.objects.filter(event_type=EventType.STUDY_EXPORTED).order_by("sequence"))
        everything = [e.extra for e in AuditEvent.objects.all()]
    assert [(e.extra["phase"], e.extra["Encrypted"]) for e in trail] == [("requested", True), ("downloaded", True)]
    assert password not in str(everything)
    # A second request gets a password of its own.
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(_export_url(tenant_a, study_a), {"kind": "deidentified", "encrypted": "on"})
    assert _password(again) != password


def test_without_the_choice_the_bundle_is_a_plain_zip_and_recorded_so(
    tenant_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    client = client_for(radiologist_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_export_url(tenant_a, study_a), {"kind": "deidentified"})
    assert response.status_code == 302
    with tenant_scope(tenant_a):
        export = Export.objects.get()
        requested = AuditEvent.objects.get(event_type=EventType.STUDY_EXPORTED)
    assert not export.encrypted
    assert requested.extra["Encrypted"] is False
    bundle = client.get(_page("export_download", tenant_a, export)).content
    assert len(zipfile.ZipFile(io.BytesIO(bundle)).namelist()) == 2


def test_others_get_no_bundle_and_no_password(
    tenant_a, study_a, client_for, outsider_b, compliance_a, django_capture_on_commit_callbacks
):
    data = {"kind": "deidentified", "encrypted": "on"}
    foreign = client_for(outsider_b).post(_export_url(tenant_a, study_a), data)
    assert foreign.status_code == 404  # another tenant's member
    refused = client_for(compliance_a).post(_export_url(tenant_a, study_a), data)
    assert refused.status_code == 403  # a member whose role sees no images
    assert b"bundle-password" not in foreign.content + refused.content
    with tenant_scope(tenant_a):
        assert not Export.objects.exists()
        assert AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED, actor_user=compliance_a).exists()


# The tenant's export policy: identified exports must be encrypted (Tenant.exports_must_be_encrypted)
# ------------------------------------------------------------------------------

POLICY = "/t/{slug}/settings/exports/"
IDENTIFIED = {"kind": "identified", "purpose": "second opinion", "recipient": "St Mary's oncology"}


def _policy_events(tenant):
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.TENANT_EXPORT_POLICY_SET.value).order_by("sequence"))


def _exports(tenant):
    with tenant_scope(tenant):
        return list(Export.objects.order_by("created_at").values_list("kind", "encrypted"))


def test_the_administrator_sets_the_policy_and_it_is_recorded(tenant_a, admin_a, client_for):
    client = client_for(admin_a)
    assert client.get(POLICY.format(slug="north")).status_code == 200
    response = client.post(POLICY.format(slug="north"), {"exports_must_be_encrypted": "on"})

    assert response.status_code == 302
    tenant_a.refresh_from_db()
    assert tenant_a.exports_must_be_encrypted
    (event,) = _policy_events(tenant_a)
    assert event.actor_user == admin_a
    assert event.extra["exports_must_be_encrypted"] == {"old": False, "new": True}
    assert "identified exports must be encrypted" in client.get(POLICY.format(slug="north")).content.decode()
    client.post(POLICY.format(slug="north"), {})
    tenant_a.refresh_from_db()
    assert not tenant_a.exports_must_be_encrypted
    assert [e.extra["exports_must_be_encrypted"]["new"] for e in _policy_events(tenant_a)] == [True, False]


def test_the_policy_is_refused_to_other_tenants_and_to_members_without_the_right(
    tenant_a, tenant_b, admin_b, radiologist_a, compliance_a, client_for
):
    assert client_for(admin_b).post(POLICY.format(slug="north"), {"exports_must_be_encrypted": "on"}).status_code == 404
    for member in (radiologist_a, compliance_a):
        refused = client_for(member).post(POLICY.format(slug="north"), {"exports_must_be_encrypted": "on"})
        assert refused.status_code == 403
        with tenant_scope(tenant_a):
            denied = AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED.value).order_by("sequence").last()
        assert denied.actor_user == member
    tenant_a.refresh_from_db()
    tenant_b.refresh_from_db()
    assert not tenant_a.exports_must_be_encrypted
    assert not tenant_b.exports_must_be_encrypted
    assert _policy_events(tenant_a) == []
    assert _policy_events(tenant_b) == []


def test_with_the_policy_a_plain_identified_export_is_refused_and_an_encrypted_one_made(
    tenant_a, admin_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    client_for(admin_a).post(POLICY.format(slug="north"), {"exports_must_be_encrypted": "on"})
    client = client_for(radiologist_a)

    refused = client.post(_export_url(tenant_a, study_a), IDENTIFIED)
    assert refused.status_code == 400
    assert "requires identified exports to be password-encrypted" in refused.content.decode()
    assert _exports(tenant_a) == []
    with tenant_scope(tenant_a):
        assert not AuditEvent.objects.filter(event_type=EventType.DISCLOSURE_EXPORTED.value).exists()

    with django_capture_on_commit_callbacks(execute=True):
        made = client.post(_export_url(tenant_a, study_a), {**IDENTIFIED, "encrypted": "on"})
    assert made.status_code == 201
    # the policy is about disclosures: a de-identified export may still be a plain bundle
    assert client.post(_export_url(tenant_a, study_a), {"kind": "deidentified"}).status_code == 302
    assert _exports(tenant_a) == [("identified", True), ("deidentified", False)]


def test_without_the_policy_both_plain_and_encrypted_identified_exports_are_made(
    tenant_a, radiologist_a, study_a, client_for, django_capture_on_commit_callbacks
):
    assert not tenant_a.exports_must_be_encrypted
    client = client_for(radiologist_a)
    with django_capture_on_commit_callbacks(execute=True):
        plain = client.post(_export_url(tenant_a, study_a), IDENTIFIED)
        encrypted = client.post(_export_url(tenant_a, study_a), {**IDENTIFIED, "encrypted": "on"})
    assert plain.status_code == 302
    assert encrypted.status_code == 201
    assert _exports(tenant_a) == [("identified", False), ("identified", True)]
