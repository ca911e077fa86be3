"""The ingest activity page: counts by state, the latest items with their reasons, and the scanner in use."""

from __future__ import annotations

import re

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from tests.tenants.helpers import events, last_event

URL = "/t/north/ingest/"


def rows(html):
    return re.findall(r'<tr id="item-[0-9a-f-]+" data-state="(\w+)">', html)


def test_counts_items_and_reasons(client_for, tenant_a, technologist_a, upload):
    upload(tenant_a, technologist_a, make_instance(), filename="IM0001.dcm")
    upload(tenant_a, technologist_a, b"plain text, not DICOM", filename="notes.txt")

    response = client_for(technologist_a).get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert sorted(rows(html)) == ["rejected", "stored"]
    assert "IM0001.dcm" in html
    assert "notes.txt" in html
    assert re.search(r'id="count-stored"[^>]*>Stored <span class="badge ok">1</span>', html)
    assert re.search(r'id="count-rejected"[^>]*>Rejected <span class="badge bad">1</span>', html)
    assert "Browser upload" in html
    assert technologist_a.username in html
    reason = last_event(tenant_a, EventType.INGEST_REJECTED).outcome_description
    assert reason
    assert reason in html
    assert "style=" not in html


def test_filter_by_state(client_for, tenant_a, technologist_a, upload):
    upload(tenant_a, technologist_a, make_instance(), filename="IM0001.dcm")
    upload(tenant_a, technologist_a, b"plain text, not DICOM", filename="notes.txt")
    client = client_for(technologist_a)

    rejected = client.get(URL, {"state": "rejected"}).content.decode()
    stored = client.get(URL, {"state": "stored"}).content.decode()
    nothing = client.get(URL, {"state": "conflict"}).content.decode()

    assert rows(rejected) == ["rejected"]
    assert rows(stored) == ["stored"]
    assert rows(nothing) == []
    assert "Nothing in this state yet." in nothing


def test_an_unknown_state_is_a_400(client_for, tenant_a, technologist_a):
    response = client_for(technologist_a).get(URL, {"state": "exploded"})

    assert response.status_code == 400
    assert "Select a valid choice." in response.content.decode()


def test_says_which_scanner_is_active(client_for, tenant_a, technologist_a, settings):
    client = client_for(technologist_a)

    settings.CLAMD_ADDRESS = ""
    builtin = client.get(URL).content.decode()
    settings.CLAMD_ADDRESS = "unix:///run/clamav/clamd.ctl"
    clamd = client.get(URL).content.decode()

    assert "the built-in scanner, which only recognises the EICAR test file (development only)" in builtin
    assert "clamd at unix:///run/clamav/clamd.ctl" in clamd
    assert "built-in" not in clamd


def test_another_tenants_items_are_not_shown(client_for, tenant_a, tenant_b, technologist_a, outsider_b, upload):
    upload(tenant_b, outsider_b, make_instance(), filename="south-only.dcm")

    html = client_for(technologist_a).get(URL).content.decode()

    assert rows(html) == []
    assert "south-only.dcm" not in html
    assert "south-only.dcm" in client_for(outsider_b).get("/t/south/ingest/").content.decode()


def test_a_member_without_the_permission_is_refused_and_it_is_recorded(client_for, tenant_a, compliance_a):
    response = client_for(compliance_a).get(URL)

    assert response.status_code == 403
    denied = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert (denied.actor_user, denied.extra["where"]) == (compliance_a, "IngestActivityView")


def test_another_tenant_gets_a_404(client_for, tenant_a, outsider_b):
    assert client_for(outsider_b).get(URL).status_code == 404


def test_the_nav_and_home_offer_the_pages_a_member_can_use(client_for, tenant_a, technologist_a, admin_a):
    tech = client_for(technologist_a).get("/t/north/").content.decode()
    admin = client_for(admin_a).get("/t/north/").content.decode()

    for path in ("/t/north/studies/", "/t/north/upload/", "/t/north/ingest/"):
        assert f'href="{path}"' in tech
        assert f'href="{path}"' not in admin


def test_each_page_of_items_shown_is_recorded_with_the_patients_stored(client_for, tenant_a, technologist_a, upload):
    """File names and reasons may name a patient: the read is on the trail before the page leaves."""
    stored = upload(tenant_a, technologist_a, make_instance(patient_name="ROE^RITA"), filename="ROE_RITA.dcm")
    rejected = upload(tenant_a, technologist_a, b"plain text, not DICOM", filename="SMITH_notes.txt")

    response = client_for(technologist_a).get(URL)

    assert response.status_code == 200
    event = last_event(tenant_a, EventType.INSTANCES_ACCESSED)
    assert event.actor_user == technologist_a
    assert event.extra["kind"] == "ingest activity"
    assert sorted(event.extra["items"]) == sorted(str(i.public_id) for i in stored + rejected)
    patients = [p for p in event.participants if p["type"] == "patient"]
    assert [p.get("name") for p in patients] == ["ROE^RITA"]
    # an empty page records nothing more
    before = len(events(tenant_a, EventType.INSTANCES_ACCESSED))
    client_for(technologist_a).get(URL, {"state": "conflict"})
    assert len(events(tenant_a, EventType.INSTANCES_ACCESSED)) == before


def test_the_batch_poll_shows_only_the_requesters_own_items(client_for, tenant_a, technologist_a, make_member, upload):
    from tenants.models import Role

    colleague = make_member(tenant_a, Role.TECHNOLOGIST, "north-tech-2")
    batch = upload(tenant_a, technologist_a, make_instance(), filename="JONES_A.dcm")[0].batch

    mine = client_for(technologist_a).get(f"/t/north/ingest/batch/{batch}/")
    theirs = client_for(colleague).get(f"/t/north/ingest/batch/{batch}/")

    assert mine.status_code == 200
    assert "JONES_A.dcm" in mine.content.decode()
    assert theirs.status_code == 404
