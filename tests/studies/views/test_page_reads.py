"""Issue 8 #11: every studies page that shows patient data records the read BEFORE it renders, naming the
patient and the study, and a read that cannot be recorded shows nothing (an error page without the data).

The pages: the study list, a series thumbnail, the study page, its access history, the share page, the export
page, the break-glass page (with an emergency grant in force) and the compliance officers' review queue."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError

from audit import services as audit_services
from audit.events import EventType
from audit.models import AuditEvent
from studies import services
from studies.dicom.synthetic import make_study
from studies.models import Series, Study
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import fresh_code, referrer_make
from tests.tenants.helpers import events

pytestmark = pytest.mark.django_db

PATIENT_ID = "P-4711"
PATIENT_NAME = "PAGEREAD^PAULA"
READ_EVENTS = {EventType.INSTANCES_ACCESSED, EventType.STUDIES_QUERIED, EventType.AUDIT_LOG_USED}


@pytest.fixture
def study(tenant_a, technologist_a, upload) -> Study:
    """A CT with thumbnails, of a patient no other test names, referred by nobody of the tenant."""
    for data in make_study(
        series=1, instances_per_series=2, patient_name=PATIENT_NAME, patient_id=PATIENT_ID, accession="PR-1"
    ):
        upload(tenant_a, technologist_a, data)
    with tenant_scope(tenant_a):
        return Study.objects.select_related("patient").get(accession_number="PR-1")


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)


@pytest.fixture
def emergency(tenant_a, referrer_a, study, django_capture_on_commit_callbacks):
    """The referring physician opened the study by break-glass (it is theirs for some hours, pending review)."""
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        return services.break_glass_start(
            actor=referrer_a, study=study, reason="Trauma bay, now", otp_token=fresh_code(referrer_a)
        )


def _thumbnail(tenant_a: Any, study: Study) -> str:
    with tenant_scope(tenant_a):
        series = Series.objects.filter(study=study, thumbnail__isnull=False).first()
    assert series is not None, "the upload made no thumbnail"
    return f"/t/north/series/{series.public_id}/thumbnail.png"


# page -> (persona, url, event type, kind recorded, fixtures the page needs)
PAGES: dict[str, tuple[str, Any, EventType, str | None, tuple[str, ...]]] = {
    "study list": ("radiologist_a", lambda t, s: "/t/north/studies/", EventType.STUDIES_QUERIED, None, ()),
    "thumbnail": ("radiologist_a", _thumbnail, EventType.INSTANCES_ACCESSED, "thumbnail", ()),
    "study page": (
        "radiologist_a",
        lambda t, s: f"/t/north/studies/{s.public_id}/",
        EventType.INSTANCES_ACCESSED,
        "study page",
        (),
    ),
    "access history": (
        "radiologist_a",
        lambda t, s: f"/t/north/studies/{s.public_id}/history/",
        EventType.AUDIT_LOG_USED,
        None,
        (),
    ),
    "share page": (
        "radiologist_a",
        lambda t, s: f"/t/north/studies/{s.public_id}/access/",
        EventType.INSTANCES_ACCESSED,
        "share page",
        (),
    ),
    "export page": (
        "radiologist_a",
        lambda t, s: f"/t/north/studies/{s.public_id}/export/",
        EventType.INSTANCES_ACCESSED,
        "export page",
        (),
    ),
    "break-glass page": (
        "referrer_a",
        lambda t, s: "/t/north/break-glass/",
        EventType.INSTANCES_ACCESSED,
        "break-glass page",
        ("emergency",),
    ),
    "review queue": (
        "compliance_a",
        lambda t, s: "/t/north/break-glass/review/",
        EventType.INSTANCES_ACCESSED,
        "review queue",
        ("emergency",),
    ),
}


def _open(name: str, request: Any, tenant_a: Any, study: Study, client_for: Any) -> tuple[Any, str, Any]:
    persona, url_of, *_ = PAGES[name]
    for fixture in PAGES[name][4]:
        request.getfixturevalue(fixture)
    user = request.getfixturevalue(persona)
    return user, url_of(tenant_a, study), client_for(user)


def _names(event: AuditEvent) -> set[tuple[str, str]]:
    return {(p["type"], p["id"]) for p in event.participants}


@pytest.mark.parametrize("name", list(PAGES))
def test_the_page_records_the_patient_and_study_it_shows(name, request, tenant_a, study, client_for):
    user, url, client = _open(name, request, tenant_a, study, client_for)
    _, _, event_type, kind, _ = PAGES[name]
    before = len(events(tenant_a, event_type))

    response = client.get(url)

    assert response.status_code == 200
    if name != "thumbnail":  # the others name the patient; the thumbnail is pixels
        assert PATIENT_ID in response.content.decode()
    recorded = [e for e in events(tenant_a, event_type)[before:] if e.actor_user == user]
    assert len(recorded) == 1, f"{name}: {len(recorded)} {event_type.name} events"
    event = recorded[0]
    assert {("patient", PATIENT_ID), ("study", study.study_instance_uid)} <= _names(event)
    if kind is not None:
        assert event.extra["kind"] == kind
    assert url in (event.extra.get("resource"), event.target_id)


@pytest.mark.parametrize("name", list(PAGES))
def test_a_read_that_cannot_be_recorded_shows_nothing(name, request, tenant_a, study, client_for, monkeypatch):
    _, url, client = _open(name, request, tenant_a, study, client_for)
    append = audit_services._append_sent  # the one statement that appends an event to its chain

    def failing_append(row: AuditEvent, statement: str, params: list[Any]) -> Any:
        if row.event_type in READ_EVENTS:
            raise DatabaseError("the audit store is down")
        return append(row, statement, params)

    monkeypatch.setattr(audit_services, "_append_sent", failing_append)
    client.raise_request_exception = False

    response = client.get(url)

    assert response.status_code == 500
    body = response.content.decode(errors="replace")
    assert PATIENT_ID not in body
    assert "PAGEREAD" not in body
    assert not response.get("Content-Type", "").startswith("image/")
