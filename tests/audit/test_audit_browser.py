"""The audit browser (issue 12): each filter returns exactly the seeded events and never another tenant's; patient
and study filters never reach a URL; keyset pages; the detail of an event (every A.5 element) and of a change
(patient identifiers masked); every read of the trail is itself recorded."""

from __future__ import annotations

import uuid
from datetime import UTC

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from studies.models import Patient
from tests.audit.helpers import events_of, last_event, record

pytestmark = pytest.mark.django_db

URL = "/t/north/audit/"
EXPORT = "/t/north/audit/export.csv"
PATIENT = {"type": "patient", "id": "PAT-0001", "name": "DOE^JANE"}
OTHER_PATIENT = {"type": "patient", "id": "PAT-0002", "name": "ROE^RICHARD"}
STUDY = {"type": "study", "id": "1.2.826.0.1.3680043.8.498.1"}


@pytest.fixture
def seeded(tenant_a, tenant_b, radiologist_a, outsider_b):
    """Events with known participants, devices, outcomes and addresses in tenant A, and look-alikes in tenant B."""
    seen = EventType.INSTANCES_ACCESSED
    events = {
        "p1_read": record(tenant_a, seen, actor=radiologist_a, participants=[PATIENT, STUDY]),
        "p2_read": record(tenant_a, seen, actor=radiologist_a, participants=[OTHER_PATIENT]),
        "p1_moved": record(
            tenant_a,
            EventType.INSTANCES_MOVED,
            participants=[PATIENT],
            system_principal="dicom:CT_ROOM1",
            source_address="10.1.2.3",
        ),
        "refused": record(
            tenant_a,
            EventType.ASSOCIATION_REJECTED,
            system_principal="dicom:ROGUE",
            source_address="10.9.9.9",
            outcome=Outcome.SERIOUS_FAILURE,
        ),
        # Another tenant's events naming the same patient id, device and address: never shown to tenant A.
        "b_p1": record(tenant_b, seen, actor=outsider_b, participants=[PATIENT, STUDY], source_address="10.1.2.3"),
        "b_dev": record(tenant_b, EventType.INSTANCES_MOVED, system_principal="dicom:CT_ROOM1"),
    }
    return events


def _ids(response):
    return {row["public_id"] for row in response.context["rows"] if row["kind"] == "event"}


def _filter(client, data):
    """POST the filter form, follow the redirect to the saved filter; return (redirect response, page)."""
    posted = client.post(URL, data)
    assert posted.status_code == 302, posted.content
    return posted, client.get(posted["Location"])


def test_patient_filter_returns_exactly_its_events_and_stays_out_of_the_url(client_for, compliance_a, seeded):
    client = client_for(compliance_a)

    posted, page = _filter(client, {"patient": "PAT-0001"})

    assert "PAT-0001" not in posted["Location"]
    assert posted["Location"].startswith(URL + "?q=")
    assert page.status_code == 200
    assert _ids(page) == {str(seeded["p1_read"].public_id), str(seeded["p1_moved"].public_id)}
    assert all(row["kind"] == "event" for row in page.context["rows"])  # field changes name no patient
    body = page.content.decode()
    assert "PAT-0001" not in "".join(
        href for href in body.split('href="')[1:] if href.startswith("?")
    )  # pager and export links carry only the saved filter id


def test_patient_in_the_query_string_is_refused(client_for, compliance_a, seeded):
    response = client_for(compliance_a).get(URL, {"patient": "PAT-0001"})
    assert response.status_code == 400
    assert "never in the address" in response.content.decode()
    assert response.context["rows"] == []
    assert client_for(compliance_a).get(EXPORT, {"study": STUDY["id"]}).status_code == 400


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"study": STUDY["id"]}, {"p1_read"}),
        ({"device": "CT_ROOM1"}, {"p1_moved"}),
        ({"outcome": str(Outcome.SERIOUS_FAILURE)}, {"refused"}),
        ({"address": "10.1.2.3"}, {"p1_moved"}),
        ({"address": "10.9.9.9", "device": "ROGUE"}, {"refused"}),
        ({"event": str(EventType.INSTANCES_ACCESSED.value), "user": "north-radiologist"}, {"p1_read", "p2_read"}),
        ({"patient": "PAT-0002", "event": str(EventType.INSTANCES_MOVED.value)}, set()),
    ],
)
def test_each_filter_returns_exactly_the_seeded_events(client_for, compliance_a, seeded, data, expected):
    _, page = _filter(client_for(compliance_a), data)
    assert page.status_code == 200
    assert _ids(page) == {str(seeded[name].public_id) for name in expected}


def test_time_window_filter(client_for, tenant_a, compliance_a, seeded):
    first = seeded["p1_read"].occurred_at.astimezone(UTC)
    last = seeded["p1_moved"].occurred_at.astimezone(UTC)
    fmt = "%Y-%m-%dT%H:%M:%S.%f"
    _, page = _filter(
        client_for(compliance_a),
        {"patient": "PAT-0001", "start": first.strftime(fmt), "end": last.strftime(fmt)},  # end exclusive
    )
    assert _ids(page) == {str(seeded["p1_read"].public_id)}
    refused = client_for(compliance_a).post(URL, {"start": last.strftime(fmt), "end": first.strftime(fmt)})
    assert refused.status_code == 400
    assert "The start date is after the end date." in refused.content.decode()


def test_reading_the_trail_for_a_patient_is_recorded_with_the_patient(client_for, tenant_a, compliance_a, seeded):
    _filter(client_for(compliance_a), {"patient": "PAT-0001", "outcome": "0"})

    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.event_id == "110101"
    assert used.actor_user == compliance_a
    assert used.extra["filters"] == {"patient": "PAT-0001", "outcome": "0"}
    assert {"type": "patient", "id": "PAT-0001", "role": "searched for"} in used.participants


def test_a_saved_filter_is_private_to_its_session_and_tenant(client_for, compliance_a, auditor_a, seeded):
    posted, _ = _filter(client_for(compliance_a), {"patient": "PAT-0001"})
    other = client_for(auditor_a).get(posted["Location"])
    assert other.status_code == 400
    assert other.context["rows"] == []
    assert "expired" in other.content.decode()


def test_keyset_pages_cover_every_entry_once(client_for, tenant_a, compliance_a, monkeypatch):
    from audit.views import pages

    monkeypatch.setattr(pages, "PAGE_SIZE", 3)
    for n in range(8):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"guess{n}", outcome=Outcome.MINOR_FAILURE)
    client = client_for(compliance_a)
    _, page = _filter(client, {"event": str(EventType.LOGIN_FAILED.value)})
    seen = []
    while True:
        seen += [row["user"] for row in page.context["rows"]]
        record(tenant_a, EventType.LOGIN_FAILED, actor_username="meanwhile")  # must not shift later pages
        if not page.context["next_query"]:
            break
        page = client.get(f"{URL}?{page.context['next_query']}")
        assert "guess" not in page.wsgi_request.get_full_path()
    assert seen == [f"guess{n}" for n in reversed(range(8))]


def test_a_damaged_page_link_is_a_400(client_for, compliance_a):
    response = client_for(compliance_a).get(URL, {"after": "not-a-cursor!"})
    assert response.status_code == 400
    assert "damaged" in response.content.decode()


def test_export_of_a_saved_patient_filter(client_for, tenant_a, compliance_a, seeded):
    import csv
    import io

    client = client_for(compliance_a)
    posted, _ = _filter(client, {"patient": "PAT-0001"})
    token = posted["Location"].split("q=")[1]
    response = client.get(EXPORT, {"q": token})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    # The two seeded events, and the reading of the trail for this patient (itself an access to their record).
    assert sorted(row["verb"] for row in rows) == sorted([
        EventType.INSTANCES_ACCESSED.spec.description,
        EventType.INSTANCES_MOVED.spec.description,
        EventType.AUDIT_LOG_USED.spec.description,
    ])  # fmt: skip


# Detail of an event
# ------------------------------------------------------------------------------

A5_ELEMENTS = [
    "EventID", "EventActionCode", "EventDateTime", "EventOutcomeIndicator", "EventTypeCode", "UserID",
    "UserIsRequestor", "RoleIDCode", "NetworkAccessPointID", "NetworkAccessPointTypeCode", "AuditSourceID",
    "AuditEnterpriseSiteID", "AuditSourceTypeCode", "ParticipantObjectTypeCode", "ParticipantObjectTypeCodeRole",
    "ParticipantObjectIDTypeCode", "ParticipantObjectID", "ParticipantObjectName",
]  # fmt: skip


def test_event_detail_shows_every_a5_element_and_is_recorded(client_for, tenant_a, compliance_a, seeded):
    event = seeded["p1_moved"]
    response = client_for(compliance_a).get(f"{URL}events/{event.public_id}/")

    assert response.status_code == 200
    body = response.content.decode()
    for element in A5_ELEMENTS:
        assert f"<dt>{element}</dt>" in body, element
    assert "110104 DICOM Instances Transferred" in body
    assert "10.1.2.3" in body
    assert "2 (IP address)" in body
    assert "1 Patient" in body
    assert "PAT-0001" in body
    assert event.hash in body
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra == {"entry": "event", "event": str(event.public_id), "sequence": event.sequence}


def test_event_detail_of_another_tenant_is_the_404_of_a_missing_one(client_for, tenant_a, compliance_a, seeded):
    client = client_for(compliance_a)
    other = client.get(f"{URL}events/{seeded['b_p1'].public_id}/")
    missing = client.get(f"{URL}events/{uuid.uuid4()}/")
    garbage = client.get(f"{URL}events/not-a-uuid/")
    assert other.status_code == missing.status_code == garbage.status_code == 404
    assert other.content == missing.content
    assert events_of(tenant_a, EventType.AUDIT_LOG_USED) == []


def test_event_detail_without_permission_is_403_and_recorded(client_for, tenant_a, radiologist_a, seeded):
    response = client_for(radiologist_a).get(f"{URL}events/{seeded['p1_read'].public_id}/")
    assert response.status_code == 403
    denied = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert denied.extra["where"] == "AuditEventDetailView"
    assert client_for(radiologist_a).post(URL, {"patient": "PAT-0001"}).status_code == 403
    assert events_of(tenant_a, EventType.AUDIT_LOG_USED) == []


def test_non_member_gets_404_everywhere(client_for, tenant_a, outsider_b, seeded):
    client = client_for(outsider_b)
    assert client.get(f"{URL}events/{seeded['p1_read'].public_id}/").status_code == 404
    assert client.post(URL, {"patient": "PAT-0001"}).status_code == 404


# Detail of a field change
# ------------------------------------------------------------------------------


def _patient_change(tenant, actor):
    return LogEntry.objects.create(
        content_type=ContentType.objects.get_for_model(Patient),
        object_pk="77",
        object_id=77,
        object_repr="DOE^JANE (PAT-0001)",
        action=LogEntry.Action.UPDATE,
        changes={"name": ["DOE^JANE", "DOE^JANET"], "patient_id": ["PAT-0001", "PAT-0009"], "sex": ["F", "O"]},
        actor=actor,
        additional_data={"tenant_id": tenant.pk},
    )


def test_change_detail_masks_patient_identifiers(client_for, tenant_a, compliance_a, admin_a):
    change = _patient_change(tenant_a, admin_a)

    response = client_for(compliance_a).get(f"{URL}changes/{change.pk}/")

    assert response.status_code == 200
    body = response.content.decode()
    for secret in ("DOE^JANE", "DOE^JANET", "PAT-0001", "PAT-0009"):
        assert secret not in body
    assert "<code>name</code>" in body
    assert "<code>patient_id</code>" in body
    assert "masked" in body
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra == {"entry": "change", "change": change.pk}
    # The list and the CSV mask the same way.
    listed = client_for(compliance_a).get(URL, {"event": "changes"}).content.decode()
    assert "DOE^JANE" not in listed
    assert "PAT-0001" not in listed
    exported = b"".join(client_for(compliance_a).get(EXPORT).streaming_content).decode()
    assert "DOE^JANE" not in exported
    assert "PAT-0001" not in exported


def test_change_detail_of_another_tenant_is_404(client_for, tenant_a, tenant_b, compliance_a, admin_b):
    theirs = _patient_change(tenant_b, admin_b)
    client = client_for(compliance_a)
    other = client.get(f"{URL}changes/{theirs.pk}/")
    missing = client.get(f"{URL}changes/999999999/")
    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content


def test_change_detail_without_permission_is_403(client_for, tenant_a, technologist_a, admin_a):
    change = _patient_change(tenant_a, admin_a)
    assert client_for(technologist_a).get(f"{URL}changes/{change.pk}/").status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).extra["where"] == "AuditChangeDetailView"


def test_a_deep_page_costs_what_the_first_costs(client_for, tenant_a, compliance_a, django_assert_max_num_queries):
    for n in range(60):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"guess{n}")
    client = client_for(compliance_a)
    first = client.get(URL)
    with django_assert_max_num_queries(30):
        second = client.get(f"{URL}?{first.context['next_query']}")
    assert second.status_code == 200
    assert AuditEvent.unscoped_objects.filter(tenant=tenant_a).count() > 60


# DICOM audit message XML export
# ------------------------------------------------------------------------------


def test_xml_export_has_every_required_a5_element(client_for, tenant_a, compliance_a, seeded):
    from xml.etree import ElementTree

    client = client_for(compliance_a)
    posted, _ = _filter(client, {"patient": "PAT-0001"})
    response = client.get(f"{URL}export.xml?{posted['Location'].split('?')[1]}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/xml")
    root = ElementTree.fromstring(b"".join(response.streaming_content))  # noqa: S314  (our own output)
    messages = root.findall("AuditMessage")
    # The two seeded events and the page view that searched for the patient; never tenant B's look-alike.
    assert len(messages) == 3
    for message in messages:
        identification = message.find("EventIdentification")
        assert {"EventActionCode", "EventDateTime", "EventOutcomeIndicator"} <= set(identification.attrib)
        event_id = identification.find("EventID")
        assert {"csd-code", "codeSystemName", "originalText"} <= set(event_id.attrib)
        requestor = message.find("ActiveParticipant")
        assert {"UserID", "UserIsRequestor"} <= set(requestor.attrib)
        source = message.find("AuditSourceIdentification")
        assert source.get("AuditSourceID")
        assert source.get("AuditEnterpriseSiteID") == "north"
        assert source.find("AuditSourceTypeCode").get("csd-code") == "4"
        for obj in message.findall("ParticipantObjectIdentification"):
            assert {"ParticipantObjectID", "ParticipantObjectTypeCode", "ParticipantObjectTypeCodeRole"} <= set(
                obj.attrib
            )
            assert obj.find("ParticipantObjectIDTypeCode").get("csd-code")
    moved = next(m for m in messages if m.find("EventIdentification/EventID").get("csd-code") == "110104")
    assert moved.find("ActiveParticipant").get("NetworkAccessPointID") == "10.1.2.3"
    patient = next(
        o for o in moved.findall("ParticipantObjectIdentification") if o.get("ParticipantObjectTypeCodeRole") == "1"
    )
    assert patient.get("ParticipantObjectID") == "PAT-0001"
    assert patient.find("ParticipantObjectIDTypeCode").get("csd-code") == "2"
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra["export"] == "xml"


def test_xml_export_refusals(client_for, tenant_a, radiologist_a, outsider_b):
    assert client_for(radiologist_a).get(f"{URL}export.xml").status_code == 403
    assert client_for(outsider_b).get(f"{URL}export.xml").status_code == 404
    assert client_for(radiologist_a).get(f"{URL}export.xml", {"patient": "x"}).status_code == 403


def test_json_export_of_a_filtered_view(client_for, tenant_a, compliance_a, seeded):
    import json

    response = client_for(compliance_a).get(f"{URL}export.json", {"device": "CT_ROOM1"})
    assert response.status_code == 200
    rows = json.loads(b"".join(response.streaming_content))
    assert [row["verb"] for row in rows] == [EventType.INSTANCES_MOVED.spec.description]
    assert rows[0]["source_address"] == "10.1.2.3"
    assert rows[0]["participants"][0]["id"] == "PAT-0001"
    assert last_event(tenant_a, EventType.AUDIT_LOG_USED).extra["export"] == "json"
    assert client_for(compliance_a).get(f"{URL}export.json", {"patient": "PAT-0001"}).status_code == 400
