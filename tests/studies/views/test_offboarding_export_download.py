"""The operators' download page of a tenant offboarding's export (issue 13): streamed to a platform operator,
TENANT_EXPORT_READ recorded before the first byte, from the replica when the primary copy is damaged; refused to
tenant members, to staff without the right and without two-factor sign-in, and for an offboarding with no
export."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import date

import pytest
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.test import Client
from django.utils.http import content_disposition_header

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import TenantOffboarding
from studies.services.offboarding import tenant_offboarding_approve, tenant_offboarding_request
from studies.storage.blobs import PRIMARY, REPLICA
from tests.chains import platform_read
from tests.conftest import verified_client
from tests.studies.retention_fixtures import stored_study
from tests.tenants.factories import UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/ops/studies/tenantoffboarding/"


def _reads() -> int:
    return AuditEvent.unscoped_objects.filter(event_type=EventType.TENANT_EXPORT_READ).count()


@pytest.fixture
def offboarded(platform_staff, tenant_a, django_capture_on_commit_callbacks) -> TenantOffboarding:
    stored_study(tenant_a, patient_id="DL-1", study_date=date(2021, 1, 1))
    second = UserFactory(username="ops-second", is_staff=True, is_superuser=True)
    offboarding = tenant_offboarding_request(operator=platform_staff, tenant=tenant_a, reason="Contract ended")
    with django_capture_on_commit_callbacks(execute=True):
        tenant_offboarding_approve(operator=second, offboarding=offboarding)
    platform_read(offboarding.refresh_from_db)  # the operators look across tenants
    assert offboarding.status == TenantOffboarding.Status.DONE
    return offboarding


def _url(offboarding: TenantOffboarding) -> str:
    return f"{CHANGELIST}{offboarding.pk}/export/"


def test_an_operator_downloads_the_export_streamed_and_recorded_first(platform_staff, offboarded):
    client = verified_client(platform_staff)
    page = client.get(f"{CHANGELIST}{offboarded.pk}/change/")
    assert page.status_code == 200
    assert _url(offboarded) in page.content.decode()

    assert _reads() == 0
    response = client.get(_url(offboarded))
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == content_disposition_header(
        as_attachment=True, filename=f"offboarding-{offboarded.public_id}.zip"
    )
    # Recorded before a byte was read from the response.
    event = AuditEvent.unscoped_objects.get(event_type=EventType.TENANT_EXPORT_READ)
    assert (event.actor_user, event.tenant_id) == (platform_staff, offboarded.tenant_id)
    assert event.extra["streamed"] is True
    assert event.extra["store"] == PRIMARY
    data = b"".join(response.streaming_content)
    assert len(data) == offboarded.export_size == int(response["Content-Length"])
    assert hashlib.sha256(data).hexdigest() == offboarded.export_sha256
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert len([n for n in archive.namelist() if n.startswith("dicom/")]) == 4
        assert set(manifest["files"]) == set(archive.namelist()) - {"manifest.json"}
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest
    assert "DL-1" not in response["Content-Disposition"]


def test_a_damaged_primary_copy_is_served_from_the_replica_and_none_is_a_404(platform_staff, offboarded):
    client = verified_client(platform_staff)
    sealed = bytearray(storages[PRIMARY].open(offboarded.export_name, "rb").read())
    sealed[100] ^= 0x01
    storages[PRIMARY].delete(offboarded.export_name)
    storages[PRIMARY].save(offboarded.export_name, ContentFile(bytes(sealed)))

    response = client.get(_url(offboarded))
    assert response.status_code == 200
    assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == offboarded.export_sha256
    assert AuditEvent.unscoped_objects.get(event_type=EventType.TENANT_EXPORT_READ).extra["store"] == REPLICA

    storages[REPLICA].delete(offboarded.export_name)
    assert client.get(_url(offboarded)).status_code == 404
    assert _reads() == 1  # nothing given, nothing recorded


def test_everyone_else_is_refused_and_nothing_is_recorded(platform_staff, offboarded, admin_a, client_for, tenant_b):
    # A tenant administrator (even of the offboarded tenant): the operators' sign-in page.
    member = client_for(admin_a).get(_url(offboarded))
    assert member.status_code == 302
    assert member["Location"].startswith("/ops/login/")
    # An operator signed in without the second factor: the same.
    unverified = Client()
    unverified.force_login(platform_staff)
    assert unverified.get(_url(offboarded)).status_code == 302
    # Staff who may not view offboardings: refused.
    helpdesk = UserFactory(username="ops-helpdesk", is_staff=True, is_superuser=False)
    assert verified_client(helpdesk).get(_url(offboarded)).status_code == 403
    helpdesk.user_permissions.add(Permission.objects.get(codename="view_tenantoffboarding"))
    assert verified_client(helpdesk).get(_url(offboarded)).status_code == 200  # with the right, yes
    assert _reads() == 1


def test_an_offboarding_without_an_export_or_unknown_is_a_404(platform_staff, tenant_b):
    waiting = tenant_offboarding_request(operator=platform_staff, tenant=tenant_b, reason="Leaving")
    client = verified_client(platform_staff)
    assert client.get(_url(waiting)).status_code == 404
    assert client.get(f"{CHANGELIST}999999/export/").status_code == 404
    assert _reads() == 0
