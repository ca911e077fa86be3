"""The audit trail's REST API: /api/v1/t/<tenant>/audit-events/, audit-events/<id>/ and audit-changes/."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.context import AUDITLOG_MASKED
from audit.events import EventType, Outcome
from tests.audit.helpers import events_of, last_event, record

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/t/north/audit-events/"
CHANGES = "/api/v1/t/north/audit-changes/"


def test_lists_events_newest_first_with_the_a5_fields(api_client_for, tenant_a, compliance_a, admin_a):
    record(tenant_a, EventType.LOGOUT, actor=admin_a, source_address="10.1.2.3")
    client = api_client_for(compliance_a, tenant_a)

    response = client.get(EVENTS)

    assert response.status_code == 200
    body = response.json()
    results = body["results"]
    assert body["count"] == len(results)
    sequences = [row["sequence"] for row in results]
    assert sequences == sorted(sequences, reverse=True)
    logout = next(row for row in results if row["verb"] == "LOGOUT")
    assert logout["event_id"] == {"code": "110114", "display": "User Authentication"}
    assert logout["event_type_code"] == {"code": "110123", "display": "Logout"}
    assert logout["action"] == "E"
    assert logout["outcome"] == Outcome.SUCCESS
    assert logout["user"] == "north-admin"
    assert logout["user_id"] == str(admin_a.subject_uuid)
    assert logout["role"] == "tenant_admin"
    assert logout["source_address"] == "10.1.2.3"
    assert logout["occurred_at"].endswith("Z")
    first = next(row for row in results if row["sequence"] == 1)
    assert first["prev_hash"] == "0" * 64
    assert len(first["hash"]) == 64
    by_sequence = {row["sequence"]: row for row in results}
    assert by_sequence[2]["prev_hash"] == by_sequence[1]["hash"]


def test_filters_and_pages(api_client_for, tenant_a, compliance_a, admin_a):
    record(tenant_a, EventType.LOGOUT, actor=admin_a)
    record(tenant_a, EventType.LOGIN_FAILED, actor_username="nobody", outcome=Outcome.MINOR_FAILURE)
    client = api_client_for(compliance_a, tenant_a)

    by_user = client.get(EVENTS, {"user": "North-Admin"}).json()["results"]
    assert by_user
    assert {row["user"] for row in by_user} == {"north-admin"}
    by_name = client.get(EVENTS, {"event_type": "LOGIN_FAILED"}).json()["results"]
    assert [row["user"] for row in by_name] == ["nobody"]
    by_number = client.get(EVENTS, {"event_type": str(EventType.LOGIN_FAILED.value)}).json()["results"]
    assert by_number == by_name
    now = timezone.now()
    assert client.get(EVENTS, {"since": (now - timedelta(hours=1)).isoformat()}).json()["count"] >= 3
    assert client.get(EVENTS, {"until": (now - timedelta(hours=1)).isoformat()}).json()["count"] == 0

    page = client.get(EVENTS, {"limit": 2, "offset": 1}).json()
    assert len(page["results"]) == 2
    assert page["next"] is not None


def test_invalid_filters_are_a_problem_document(api_client_for, tenant_a, compliance_a):
    client = api_client_for(compliance_a, tenant_a)
    response = client.get(EVENTS, {"event_type": "NOT_A_VERB", "since": "soon"})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/problem+json")
    assert set(response.json()["errors"]) == {"event_type", "since"}
    now = timezone.now()
    response = client.get(CHANGES, {"since": now.isoformat(), "until": (now - timedelta(days=1)).isoformat()})
    assert response.status_code == 400


def test_reading_is_recorded_with_the_filters_and_count(api_client_for, tenant_a, auditor_a):
    client = api_client_for(auditor_a, tenant_a)

    body = client.get(EVENTS, {"event_type": "TENANT_CREATED"}).json()

    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.actor_user == auditor_a
    assert used.actor_role == "auditor"
    assert used.extra == {"api": "AuditEventListApi", "filters": {"event_type": "TENANT_CREATED"}, "results": 1}
    assert body["count"] == 1
    assert used.target_id == EVENTS


def test_a_member_without_the_permission_gets_403_and_it_is_recorded(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    event = last_event(tenant_a, EventType.TENANT_CREATED)
    for url in (EVENTS, f"{EVENTS}{event.public_id}/", CHANGES):
        response = client.get(url)
        assert response.status_code == 403, url
        assert response.json()["status"] == 403
    denied = events_of(tenant_a, EventType.ACCESS_DENIED)
    assert [d.extra["where"] for d in denied] == ["AuditEventListApi", "AuditEventDetailApi", "AuditChangeListApi"]
    assert {d.actor_user for d in denied} == {radiologist_a}
    assert events_of(tenant_a, EventType.AUDIT_LOG_USED) == []


def test_another_tenant_is_the_same_404_as_a_missing_one(api_client_for, tenant_a, tenant_b, outsider_b):
    client = api_client_for(outsider_b, tenant_b)
    for path in ("audit-events/", "audit-changes/", f"audit-events/{uuid.uuid4()}/"):
        other = client.get(f"/api/v1/t/north/{path}")
        missing = client.get(f"/api/v1/t/nowhere/{path}")
        assert other.status_code == missing.status_code == 404
        assert other.json() == missing.json()


def test_one_event_by_id_and_other_tenants_ids_are_404(api_client_for, tenant_a, tenant_b, compliance_a):
    client = api_client_for(compliance_a, tenant_a)
    mine = last_event(tenant_a, EventType.TENANT_CREATED)
    theirs = last_event(tenant_b, EventType.TENANT_CREATED)

    response = client.get(f"{EVENTS}{mine.public_id}/")
    assert response.status_code == 200
    assert response.json()["id"] == str(mine.public_id)
    assert response.json()["hash"] == mine.hash
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra == {"api": "AuditEventDetailApi", "event": str(mine.public_id)}

    other = client.get(f"{EVENTS}{theirs.public_id}/")
    random = client.get(f"{EVENTS}{uuid.uuid4()}/")
    garbage = client.get(f"{EVENTS}not-a-uuid/")
    assert other.status_code == random.status_code == garbage.status_code == 404
    assert other.json() == random.json() == garbage.json()


def test_lists_field_changes_of_this_tenant_only(api_client_for, tenant_a, tenant_b, compliance_a, admin_b):
    client = api_client_for(compliance_a, tenant_a)

    response = client.get(CHANGES)

    assert response.status_code == 200
    results = response.json()["results"]
    assert results
    assert {row["model"] for row in results} >= {"tenants.membership", "tenants.apitoken"}
    assert all(row["action"] in {"create", "update", "delete"} for row in results)
    times = [row["timestamp"] for row in results]
    assert times == sorted(times, reverse=True)
    assert not any("south" in row["object"] for row in results)
    token = next(row for row in results if row["model"] == "tenants.apitoken")
    assert "digest" not in token["changes"] or token["changes"]["digest"][1] == AUDITLOG_MASKED  # masked whole
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra["api"] == "AuditChangeListApi"
    assert used.extra["results"] == len(results)


def test_unauthenticated_is_401(client, tenant_a):
    response = client.get(EVENTS)
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/problem+json")


def test_query_budget(api_client_for, tenant_a, compliance_a, django_assert_max_num_queries):
    for n in range(30):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"guess{n}")
    client = api_client_for(compliance_a, tenant_a)
    with django_assert_max_num_queries(25):
        assert client.get(EVENTS).status_code == 200
    with django_assert_max_num_queries(25):
        assert client.get(CHANGES).status_code == 200
