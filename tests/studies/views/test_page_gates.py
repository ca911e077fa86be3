"""Every page of the studies app, through the test client: a member of another tenant gets the 404 of a tenant
that does not exist; a member whose role does not allow the page gets a 403 recorded as ACCESS_DENIED (naming
the page), without any patient data and without any read recorded; another tenant's study, series or grant in
this tenant's URL is the same 404 as a made-up id."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from audit.events import EventType
from studies import services
from studies.dicom.synthetic import make_study
from studies.models import Series, Study
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import fresh_code, referrer_make
from tests.tenants.helpers import events

pytestmark = pytest.mark.django_db

PATIENT_ID = "P-GATE-1"


@pytest.fixture
def north(tenant_a, technologist_a, upload) -> dict[str, Any]:
    """Tenant A's study, its series and an emergency grant on it, as the pages' URLs need them."""
    for data in make_study(series=1, instances_per_series=1, patient_name="GATE^GRETA", patient_id=PATIENT_ID):
        upload(tenant_a, technologist_a, data)
    with tenant_scope(tenant_a):
        study = Study.objects.get()
        series = Series.objects.get()
    return {"study": study.public_id, "series": series.public_id, "share": uuid.uuid4(), "batch": uuid.uuid4()}


@pytest.fixture
def south(tenant_b, outsider_b, make_member, upload, django_capture_on_commit_callbacks) -> dict[str, Any]:
    """Tenant B's study, series, share and emergency grant: what must never answer in tenant A's URLs."""
    for data in make_study(series=1, instances_per_series=1, patient_name="SOUTH^SAM", patient_id="P-SOUTH"):
        upload(tenant_b, outsider_b, data)
    referrer = referrer_make(make_member, tenant_b, "south-referrer-2")
    with tenant_scope(tenant_b):
        study = Study.objects.get()
        series = Series.objects.get()
    with tenant_scope(tenant_b), django_capture_on_commit_callbacks(execute=True):
        grant = services.break_glass_start(
            actor=referrer, study=study, reason="South emergency", otp_token=fresh_code(referrer)
        )
    return {"study": study.public_id, "series": series.public_id, "grant": grant.public_id}


# (method, path under /t/north/, view named in ACCESS_DENIED, persona without the permission)
PAGES = [
    ("get", "studies/", "StudiesView", "admin_a"),
    ("post", "studies/", "StudiesView", "admin_a"),
    ("get", "series/{series}/thumbnail.png", "SeriesThumbnailView", "admin_a"),
    ("get", "studies/{study}/", "StudyView", "compliance_a"),
    ("get", "studies/{study}/history/", "StudyHistoryView", "auditor_a"),
    ("get", "studies/{study}/access/", "StudyAccessView", "admin_a"),
    ("post", "studies/{study}/access/", "StudyAccessView", "admin_a"),
    ("post", "studies/{study}/access/shares/{share}/revoke/", "ShareRevokeView", "admin_a"),
    ("get", "studies/{study}/export/", "StudyExportView", "admin_a"),
    ("post", "studies/{study}/export/", "StudyExportView", "compliance_a"),
    ("get", "exports/search/", "SearchExportView", "admin_a"),
    ("post", "exports/search/", "SearchExportView", "auditor_a"),
    ("get", "break-glass/", "BreakGlassView", "admin_a"),
    ("post", "break-glass/", "BreakGlassView", "compliance_a"),
    ("get", "break-glass/review/", "BreakGlassReviewView", "radiologist_a"),
    ("post", "break-glass/review/{share}/", "BreakGlassSignOffView", "technologist_a"),
    ("get", "upload/", "UploadView", "compliance_a"),
    ("post", "upload/files/", "UploadFilesView", "admin_a"),
    ("get", "ingest/", "IngestActivityView", "compliance_a"),
    ("get", "ingest/batch/{batch}/", "IngestBatchView", "auditor_a"),
]


def _reads(tenant: Any) -> int:
    return sum(len(events(tenant, kind)) for kind in (EventType.INSTANCES_ACCESSED, EventType.STUDIES_QUERIED))


def _ids(page: tuple[str, str, str, str]) -> str:
    return f"{page[0]} {page[1]}"


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_a_member_without_the_permission_gets_403_recorded(page, request, tenant_a, north, client_for):
    method, path, view, persona = page
    user = request.getfixturevalue(persona)
    client = client_for(user)
    reads_before = len(events(tenant_a, EventType.INSTANCES_ACCESSED)) + len(
        events(tenant_a, EventType.STUDIES_QUERIED)
    )

    response = getattr(client, method)(f"/t/north/{path.format(**north)}")

    assert response.status_code == 403
    assert PATIENT_ID not in response.content.decode(errors="replace")
    denied = [e for e in events(tenant_a, EventType.ACCESS_DENIED) if e.actor_user == user]
    assert [e.extra["where"] for e in denied] == [view]
    assert _reads(tenant_a) == reads_before


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_a_member_of_another_tenant_gets_the_404_of_a_missing_tenant(page, tenant_a, north, outsider_b, client_for):
    method, path, _, _ = page
    client = client_for(outsider_b)

    response = getattr(client, method)(f"/t/north/{path.format(**north)}")
    nowhere = getattr(client, method)(f"/t/nowhere/{path.format(**north)}")

    assert response.status_code == nowhere.status_code == 404
    assert response.content == nowhere.content
    assert events(tenant_a, EventType.ACCESS_DENIED) == []


# Pages that take the id of an object: tenant B's object in tenant A's URL, for a member of A who may use the page
OBJECT_PAGES = [
    ("get", "series/{series}/thumbnail.png", "radiologist_a"),
    ("get", "studies/{study}/", "radiologist_a"),
    ("get", "studies/{study}/history/", "radiologist_a"),
    ("get", "studies/{study}/access/", "radiologist_a"),
    ("post", "studies/{study}/access/", "radiologist_a"),
    ("get", "studies/{study}/export/", "radiologist_a"),
    ("post", "studies/{study}/export/", "radiologist_a"),
    ("post", "break-glass/{grant}/end/", "referrer_a"),
    ("post", "break-glass/review/{grant}/", "compliance_a"),
]


@pytest.mark.parametrize("page", OBJECT_PAGES, ids=lambda p: f"{p[0]} {p[1]}")
def test_another_tenants_object_is_the_same_404_as_a_made_up_one(
    page, request, tenant_a, make_member, north, south, client_for
):
    method, path, persona = page
    user = referrer_make(make_member, tenant_a) if persona == "referrer_a" else request.getfixturevalue(persona)
    client = client_for(user)
    made_up = {key: uuid.uuid4() for key in south}

    theirs = getattr(client, method)(f"/t/north/{path.format(**south)}")
    missing = getattr(client, method)(f"/t/north/{path.format(**made_up)}")

    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content
    assert "P-SOUTH" not in theirs.content.decode(errors="replace")
