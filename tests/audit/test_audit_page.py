"""The tenant's audit page /t/<tenant>/audit/ and its CSV export."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.views import PAGE_SIZE
from tests.audit.helpers import events_of, last_event, record

pytestmark = pytest.mark.django_db

URL = "/t/north/audit/"
EXPORT = "/t/north/audit/export.csv"


def _times(rows):
    return [row["at"] for row in rows]


def test_lists_events_and_field_changes_newest_first(client_for, tenant_a, compliance_a, radiologist_a):
    record(tenant_a, EventType.LOGIN_FAILED, actor_username="north-radiologist", outcome=Outcome.MINOR_FAILURE)

    response = client_for(compliance_a).get(URL)

    assert response.status_code == 200
    rows = response.context["rows"]
    assert {row["kind"] for row in rows} == {"event", "change"}
    assert _times(rows) == sorted(_times(rows), reverse=True)
    # The newest was recorded after the fixtures made their memberships; the oldest is the tenant itself.
    assert rows[0]["verb"] == EventType.LOGIN_FAILED.spec.description
    assert rows[-1]["verb"] == EventType.TENANT_CREATED.spec.description
    changes = [row for row in rows if row["kind"] == "change"]
    assert any(row["model"] == "tenants.membership" and "role" in row["changes"] for row in changes)
    page = response.content.decode()
    assert 'User Authentication · Login <span class="code">(110114 / 110122)</span>' in page
    assert "Minor failure" in page
    assert "Field change" in page


def test_filters_by_user_event_and_dates(client_for, tenant_a, compliance_a, admin_a):
    record(tenant_a, EventType.LOGOUT, actor=admin_a)
    client = client_for(compliance_a)

    by_user = client.get(URL, {"user": "NORTH-ADMIN"}).context["rows"]
    assert by_user
    assert {row["user"] for row in by_user} == {"north-admin"}

    by_event = client.get(URL, {"event": str(EventType.LOGOUT.value)}).context["rows"]
    assert [(row["kind"], row["verb"]) for row in by_event] == [("event", EventType.LOGOUT.spec.description)]

    only_changes = client.get(URL, {"event": "changes"}).context["rows"]
    assert only_changes
    assert {row["kind"] for row in only_changes} == {"change"}

    today = timezone.now().date()
    assert client.get(URL, {"start": today.isoformat(), "end": today.isoformat()}).context["rows"]
    assert client.get(URL, {"end": (today - timedelta(days=1)).isoformat()}).context["rows"] == []
    assert client.get(URL, {"start": (today + timedelta(days=1)).isoformat()}).context["rows"] == []


def test_invalid_filters_are_explained(client_for, tenant_a, compliance_a):
    today = timezone.now().date()
    response = client_for(compliance_a).get(URL, {"start": today.isoformat(), "end": "2000-01-01"})
    assert response.status_code == 400
    assert "The start date is after the end date." in response.content.decode()
    response = client_for(compliance_a).get(URL, {"event": "999999"})
    assert response.status_code == 400


def test_pages_split_the_merged_list_without_gaps_or_overlaps(client_for, tenant_a, auditor_a):
    for n in range(PAGE_SIZE + 5):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"guess{n}", outcome=Outcome.MINOR_FAILURE)
    client = client_for(auditor_a)

    first = client.get(URL)
    record(tenant_a, EventType.LOGOUT, actor_username="meanwhile")  # new entries must not shift the next page
    older = re.search(r'href="(\?[^"]*)">Older', first.content.decode())
    assert older is not None
    second = client.get(URL + html.unescape(older.group(1)))

    assert first.context["count"] == PAGE_SIZE
    assert second.context["next_query"] == ""  # the last page
    rows = first.context["rows"] + second.context["rows"]
    assert not any(row["user"] == "meanwhile" for row in rows)
    # Every entry that existed when the first page was read, exactly once (the fixtures' changes included).
    expected = client.get(EXPORT).streaming_content
    # Less the header, the LOGOUT recorded meanwhile and the two Audit Log Used events of reading the pages.
    total = len(b"".join(expected).decode().strip().splitlines()) - 4
    assert sum(1 + len(row["folded"]) - (row["kind"] == "bookkeeping") for row in rows) == total
    assert _times(rows) == sorted(_times(rows), reverse=True)
    keys = [(row["kind"], row["sequence"], row["object"], row["at"]) for row in rows]
    assert len(set(keys)) == len(keys)
    assert "Older" in first.content.decode()


def test_opening_the_page_is_recorded_with_filters_and_count(client_for, tenant_a, compliance_a):
    response = client_for(compliance_a).get(URL, {"user": "north-compliance", "event": "changes"})

    assert response.status_code == 200
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.actor_user == compliance_a
    assert used.actor_role == "compliance_officer"
    assert used.event_id == "110101"
    assert used.action == "R"
    assert used.extra["filters"] == {"user": "north-compliance", "event": "changes"}
    assert used.extra["results"] == response.context["count"]
    assert used.target_type == "audit_log"
    assert used.target_id == URL
    assert used.request_id == response["X-Request-ID"]


def test_a_member_without_the_permission_gets_403_and_it_is_recorded(client_for, tenant_a, radiologist_a):
    response = client_for(radiologist_a).get(URL)

    assert response.status_code == 403
    denied = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert denied.actor_user == radiologist_a
    assert denied.outcome == Outcome.MINOR_FAILURE
    assert denied.extra["where"] == "AuditView"
    assert events_of(tenant_a, EventType.AUDIT_LOG_USED) == []
    assert client_for(radiologist_a).get(EXPORT).status_code == 403


def test_another_tenant_is_the_same_404_as_a_missing_one(client_for, tenant_a, outsider_b):
    client = client_for(outsider_b)
    other = client.get(URL)
    missing = client.get("/t/nowhere/audit/")
    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert client.get(EXPORT).status_code == 404
    assert events_of(tenant_a, EventType.AUDIT_LOG_USED) == []


def test_a_visitor_without_mfa_is_sent_to_sign_in(client, tenant_a, compliance_a):
    response = client.get(URL)
    assert response.status_code == 302
    client.force_login(compliance_a)  # password only, no TOTP
    response = client.get(URL)
    assert response.status_code == 302
    assert "/accounts/mfa/" in response["Location"]


def test_page_query_budget(client_for, tenant_a, compliance_a, django_assert_max_num_queries):
    for n in range(20):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"guess{n}")
    client = client_for(compliance_a)
    with django_assert_max_num_queries(30):
        assert client.get(URL).status_code == 200


def _csv(response):
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_export_streams_the_filtered_trail_as_csv(client_for, tenant_a, compliance_a, admin_a):
    record(tenant_a, EventType.LOGOUT, actor=admin_a)
    client = client_for(compliance_a)

    response = client.get(EXPORT)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-north-')
    rows = _csv(response)
    assert {row["kind"] for row in rows} == {"event", "change"}
    logout = next(row for row in rows if row["verb"] == EventType.LOGOUT.spec.description)
    assert logout["event_id"] == "110114"
    assert logout["user"] == "north-admin"
    assert logout["role"] == "Tenant administrator"
    assert len(logout["hash"]) == 64
    assert logout["when_utc"].endswith("+00:00")
    assert any(row["model"] == "tenants.membership" and '"role"' in row["changes"] for row in rows)

    filtered = _csv(client.get(EXPORT, {"event": str(EventType.LOGOUT.value)}))
    assert [row["verb"] for row in filtered] == [EventType.LOGOUT.spec.description]

    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra["export"] == "csv"
    assert used.extra["filters"] == {"event": str(EventType.LOGOUT.value)}
    assert used.extra["results"] == 1


def test_export_cells_cannot_become_spreadsheet_formulas(client_for, tenant_a, compliance_a):
    # A failed sign-in records the name that was typed: attacker-controlled text.
    record(tenant_a, EventType.LOGIN_FAILED, actor_username='=HYPERLINK("http://evil")')
    rows = _csv(client_for(compliance_a).get(EXPORT, {"event": str(EventType.LOGIN_FAILED.value)}))
    assert rows[0]["user"] == '\'=HYPERLINK("http://evil")'


def test_export_rejects_invalid_filters(client_for, tenant_a, compliance_a):
    response = client_for(compliance_a).get(EXPORT, {"start": "yesterday"})
    assert response.status_code == 400
    assert b"Invalid filters" in response.content
