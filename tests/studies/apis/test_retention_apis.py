"""The retention API (issue 13) through the real services, pipeline and stores: policies, the two-person
deletion, holds; another tenant's ids are 404s, a member without `tenants.manage_retention` a recorded 403."""

from __future__ import annotations

import uuid
from datetime import date

import pytest

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import LegalHold, RetentionPolicy, RetentionProposal, RetentionTombstone, Study
from studies.services import retention
from tenants.scoping import tenant_scope
from tests.studies.retention_fixtures import stored_study

pytestmark = pytest.mark.django_db


@pytest.fixture
def api_client_for(api_client_for):
    """The shared fixture's clients, sending JSON bodies (the API accepts JSON only)."""

    def make(user, tenant):
        client = api_client_for(user, tenant)
        client.default_format = "json"
        return client

    return make


def _base(tenant) -> str:
    return f"/api/v1/t/{tenant.slug}/retention"


def _events(tenant, event: EventType) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event).order_by("sequence"))


def test_policies_listed_created_and_stopped(tenant_a, admin_a, api_client_for):
    client = api_client_for(admin_a, tenant_a)
    created = client.post(
        f"{_base(tenant_a)}/policies/",
        {"name": "Mammography", "modality": "mg", "years_after_last_study": 10, "keep_until_patient_age": 21},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["modality"], body["years_after_last_study"], body["keep_until_patient_age"], body["active"]) == (
        "MG",
        10,
        21,
        True,
    )
    listed = client.get(f"{_base(tenant_a)}/policies/").json()
    assert [p["id"] for p in listed["results"]] == [body["id"]]

    bad = client.post(f"{_base(tenant_a)}/policies/", {"name": "x", "years_after_last_study": 0})
    assert bad.status_code == 400
    assert "years_after_last_study" in str(bad.json())

    stopped = client.post(f"{_base(tenant_a)}/policies/{body['id']}/stop/")
    assert stopped.status_code == 200
    assert stopped.json()["active"] is False
    with tenant_scope(tenant_a):
        assert not RetentionPolicy.objects.get().active
    changes = [e.extra["change"] for e in _events(tenant_a, EventType.RETENTION_POLICY_SET)]
    assert changes == ["created", "deactivated"]
    assert {e.actor_user_id for e in _events(tenant_a, EventType.RETENTION_POLICY_SET)} == {admin_a.pk}


def test_two_people_delete_through_the_api_and_one_alone_cannot(tenant_a, admin_a, compliance_a, api_client_for):
    stored_study(tenant_a, patient_id="API-RET-OLD", study_date=date(2009, 6, 1))
    first, second = api_client_for(admin_a, tenant_a), api_client_for(compliance_a, tenant_a)
    assert first.post(f"{_base(tenant_a)}/policies/", {"name": "All", "years_after_last_study": 7}).status_code == 201
    with tenant_scope(tenant_a):
        assert retention.retention_proposals_make() == 1
    queue = first.get(f"{_base(tenant_a)}/proposals/").json()["results"]
    assert len(queue) == 1
    assert queue[0]["status"] == "proposed"
    proposal = queue[0]["id"]

    approved = first.post(f"{_base(tenant_a)}/proposals/{proposal}/approve/")
    assert approved.status_code == 200, approved.content
    assert approved.json()["first_approved_by"] == admin_a.username
    # The same person again: refused with a reason, nothing deleted.
    again = first.post(f"{_base(tenant_a)}/proposals/{proposal}/approve/")
    assert again.status_code == 400
    assert "second person" in str(again.json())
    with tenant_scope(tenant_a):
        assert Study.objects.filter(patient__patient_id="API-RET-OLD").exists()
        assert not RetentionTombstone.objects.exists()

    deleted = second.post(f"{_base(tenant_a)}/proposals/{proposal}/approve/")
    assert deleted.status_code == 200, deleted.content
    assert (deleted.json()["status"], deleted.json()["decided_by"]) == ("deleted", compliance_a.username)
    with tenant_scope(tenant_a):
        assert not Study.objects.filter(patient__patient_id="API-RET-OLD").exists()
        tombstone = RetentionTombstone.objects.get()
        assert (tombstone.first_approved_by, tombstone.approved_by) == (admin_a, compliance_a)
    assert [e.actor_user_id for e in _events(tenant_a, EventType.RETENTION_APPROVED)] == [admin_a.pk]
    assert [e.actor_user_id for e in _events(tenant_a, EventType.STUDY_DELETED)] == [compliance_a.pk]
    decided = first.get(f"{_base(tenant_a)}/proposals/", {"decided": "true"}).json()["results"]
    assert [p["id"] for p in decided] == [proposal]
    assert first.get(f"{_base(tenant_a)}/proposals/").json()["results"] == []
    # Decided: approving or rejecting again is a 400 that says so.
    assert second.post(f"{_base(tenant_a)}/proposals/{proposal}/reject/", {"reason": "late"}).status_code == 400


def test_reject_needs_a_reason(tenant_a, admin_a, api_client_for):
    stored_study(tenant_a, patient_id="API-RET-REJ", study_date=date(2009, 6, 1))
    client = api_client_for(admin_a, tenant_a)
    client.post(f"{_base(tenant_a)}/policies/", {"name": "All", "years_after_last_study": 7})
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
    url = f"{_base(tenant_a)}/proposals/{proposal.public_id}/reject/"
    blank = client.post(url, {"reason": "  "})
    assert blank.status_code == 400
    assert "reason" in str(blank.json())
    done = client.post(url, {"reason": "Still under treatment"})
    assert done.status_code == 200
    assert done.json()["status"] == "rejected"
    [event] = _events(tenant_a, EventType.RETENTION_REJECTED)
    assert event.actor_user_id == admin_a.pk
    with tenant_scope(tenant_a):
        assert Study.objects.filter(patient__patient_id="API-RET-REJ").exists()


def test_holds_placed_block_deletion_and_are_lifted(tenant_a, admin_a, compliance_a, api_client_for):
    study = stored_study(tenant_a, patient_id="API-HOLD", study_date=date(2009, 6, 1))
    client = api_client_for(admin_a, tenant_a)
    client.post(f"{_base(tenant_a)}/policies/", {"name": "All", "years_after_last_study": 7})
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()

    neither = client.post(f"{_base(tenant_a)}/holds/", {"reason": "litigation"})
    assert neither.status_code == 400
    no_reason = client.post(f"{_base(tenant_a)}/holds/", {"patient_id": "API-HOLD", "reason": ""})
    assert no_reason.status_code == 400
    assert "reason" in str(no_reason.json())
    missing = client.post(f"{_base(tenant_a)}/holds/", {"patient_id": "NOBODY", "reason": "litigation"})
    assert missing.status_code == 404

    placed = client.post(f"{_base(tenant_a)}/holds/", {"patient_id": "API-HOLD", "reason": "litigation"})
    assert placed.status_code == 201, placed.content
    hold = placed.json()
    assert hold["patient"] == str(study.patient.public_id)
    assert hold["lifted_at"] is None
    with tenant_scope(tenant_a):  # the open proposal it covers is cancelled; none is made while it holds
        assert RetentionProposal.objects.get().status == RetentionProposal.Status.CANCELLED
        assert retention.retention_proposals_make() == 0
    on_study = client.post(
        f"{_base(tenant_a)}/holds/", {"study_instance_uid": study.study_instance_uid, "reason": "audit request"}
    )
    assert on_study.status_code == 201
    assert on_study.json()["study_instance_uid"] == study.study_instance_uid
    assert len(client.get(f"{_base(tenant_a)}/holds/").json()["results"]) == 2

    lifted = client.post(f"{_base(tenant_a)}/holds/{hold['id']}/lift/", {"reason": "case closed"})
    assert lifted.status_code == 200
    assert (lifted.json()["lifted_by"], lifted.json()["lift_reason"]) == (admin_a.username, "case closed")
    assert [e.extra["hold"] for e in _events(tenant_a, EventType.LEGAL_HOLD_PLACED)] == [
        hold["id"],
        on_study.json()["id"],
    ]
    assert [e.extra["hold"] for e in _events(tenant_a, EventType.LEGAL_HOLD_LIFTED)] == [hold["id"]]
    with tenant_scope(tenant_a):
        assert LegalHold.objects.filter(lifted_at__isnull=True).count() == 1


def test_another_tenants_ids_are_404_and_its_data_is_untouched(tenant_a, tenant_b, admin_a, admin_b, api_client_for):
    stored_study(tenant_a, patient_id="API-ISO", study_date=date(2009, 6, 1))
    mine = api_client_for(admin_a, tenant_a)
    policy = mine.post(f"{_base(tenant_a)}/policies/", {"name": "All", "years_after_last_study": 7}).json()
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
    hold = mine.post(f"{_base(tenant_a)}/holds/", {"patient_id": "API-ISO", "reason": "litigation"}).json()

    other = api_client_for(admin_b, tenant_b)
    # Tenant B's administrator, in tenant B, with tenant A's ids: the same 404 as a made-up id.
    for url, body in [
        (f"{_base(tenant_b)}/policies/{policy['id']}/stop/", None),
        (f"{_base(tenant_b)}/proposals/{proposal.public_id}/approve/", None),
        (f"{_base(tenant_b)}/proposals/{proposal.public_id}/reject/", {"reason": "x"}),
        (f"{_base(tenant_b)}/holds/{hold['id']}/lift/", {"reason": "x"}),
        (f"{_base(tenant_b)}/holds/{uuid.uuid4()}/lift/", {"reason": "x"}),
        (f"{_base(tenant_b)}/holds/not-a-uuid/lift/", {"reason": "x"}),
    ]:
        answer = other.post(url, body)
        assert answer.status_code == 404, (url, answer.content)
    # Nor a hold on tenant A's patient, nor anything under tenant A's prefix.
    assert other.post(f"{_base(tenant_b)}/holds/", {"patient_id": "API-ISO", "reason": "x"}).status_code == 404
    assert other.get(f"{_base(tenant_a)}/policies/").status_code == 404
    assert other.get(f"{_base(tenant_b)}/policies/").json()["results"] == []
    with tenant_scope(tenant_a):
        assert RetentionPolicy.objects.get().active
        assert LegalHold.objects.get().lifted_at is None


@pytest.mark.parametrize("role", ["radiologist_a", "auditor_a", "technologist_a"])
def test_a_member_without_the_right_gets_a_recorded_403(role, tenant_a, admin_a, api_client_for, request):
    stored_study(tenant_a, patient_id="API-403", study_date=date(2009, 6, 1))
    api_client_for(admin_a, tenant_a).post(f"{_base(tenant_a)}/policies/", {"name": "All", "years_after_last_study": 7})
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
        denied_before = AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED).count()
    member = request.getfixturevalue(role)
    client = api_client_for(member, tenant_a)
    calls = [
        client.get(f"{_base(tenant_a)}/policies/"),
        client.post(f"{_base(tenant_a)}/policies/", {"name": "Mine", "years_after_last_study": 1}),
        client.get(f"{_base(tenant_a)}/proposals/"),
        client.post(f"{_base(tenant_a)}/proposals/{proposal.public_id}/approve/"),
        client.post(f"{_base(tenant_a)}/proposals/{proposal.public_id}/reject/", {"reason": "no"}),
        client.get(f"{_base(tenant_a)}/holds/"),
        client.post(f"{_base(tenant_a)}/holds/", {"patient_id": "API-403", "reason": "x"}),
    ]
    assert [c.status_code for c in calls] == [403] * len(calls)
    with tenant_scope(tenant_a):
        denied = AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED)
        assert denied.count() == denied_before + len(calls)
        assert set(denied.values_list("actor_user_id", flat=True)[denied_before:]) <= {member.pk}
        assert RetentionPolicy.objects.count() == 1
        assert RetentionProposal.objects.get().first_approved_by is None
        assert not LegalHold.objects.exists()


def _ids(event: AuditEvent, kind: str) -> set[str]:
    return {p["id"] for p in event.participants if p.get("type") == kind}


def test_the_lists_of_proposals_and_holds_are_recorded_reads(tenant_a, compliance_a, api_client_for):
    """A proposal names its study and a hold its study or patient: each page of them leaving is an
    INSTANCES_ACCESSED event naming the reader, the patients and the studies shown. The policies name no one."""
    held = stored_study(tenant_a, patient_id="API-READ-HELD", study_date=date(2009, 6, 1))
    proposed = stored_study(tenant_a, patient_id="API-READ-OLD", study_date=date(2008, 6, 1))
    client = api_client_for(compliance_a, tenant_a)
    client.post(f"{_base(tenant_a)}/policies/", {"name": "All", "years_after_last_study": 7})
    assert client.get(f"{_base(tenant_a)}/holds/").json()["results"] == []
    assert client.get(f"{_base(tenant_a)}/policies/").status_code == 200
    assert _events(tenant_a, EventType.INSTANCES_ACCESSED) == []  # nothing of a patient shown: nothing read

    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
    client.post(f"{_base(tenant_a)}/holds/", {"patient_id": "API-READ-HELD", "reason": "litigation"})
    queue = client.get(f"{_base(tenant_a)}/proposals/")
    assert [p["study_instance_uid"] for p in queue.json()["results"]] == [proposed.study_instance_uid]
    holds = client.get(f"{_base(tenant_a)}/holds/")
    assert len(holds.json()["results"]) == 1

    queue_read, holds_read = _events(tenant_a, EventType.INSTANCES_ACCESSED)
    assert {queue_read.actor_user_id, holds_read.actor_user_id} == {compliance_a.pk}
    assert (queue_read.extra["kind"], holds_read.extra["kind"]) == ("retention queue", "legal holds")
    assert _ids(queue_read, "study") == {proposed.study_instance_uid}
    assert _ids(queue_read, "patient") == {"API-READ-OLD"}
    assert _ids(holds_read, "patient") == {"API-READ-HELD"}
    assert _ids(holds_read, "study") == set()
    assert held.patient.patient_id == "API-READ-HELD"
