"""The training REST API under /api/v1/t/<tenant>/training/: for each operation the success path, another
tenant's id (the same 404 as a made-up one), a member without the permission (403 and ACCESS_DENIED), and its
audit record. A learning system posts completions and imports CSV with a compliance officer's token."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest

from audit.events import EventType
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.tenants.helpers import problem, random_id
from tests.training.helpers import PDF, adopt, events, last_event, record, today
from training import services
from training.models import Completion, Requirement

BASE = "/api/v1/t/north/training"


@pytest.fixture
def officer(api_client_for, compliance_a, tenant_a):
    return api_client_for(compliance_a, tenant_a)


@pytest.fixture
def radiologist(api_client_for, radiologist_a, tenant_a):
    return api_client_for(radiologist_a, tenant_a)


@pytest.fixture
def south_course(tenant_b, make_member):
    south_officer = make_member(tenant_b, Role.COMPLIANCE_OFFICER, "south-compliance")
    return adopt(tenant_b, south_officer), south_officer


def assert_denied(response, tenant, user):
    assert response.status_code == 403, response.content
    assert problem(response)["status"] == 403
    assert last_event(tenant, EventType.ACCESS_DENIED).actor_user == user


def assert_same_404(client, url_of, method="get", data=None):
    other = getattr(client, method)(url_of["other"], data, format="json")
    made_up = getattr(client, method)(url_of["random"], data, format="json")
    assert other.status_code == made_up.status_code == 404
    assert other.json() == made_up.json()


def test_courses_adopt_create_and_list(officer, radiologist, tenant_a, compliance_a, radiologist_a):
    services.catalogue_ensure()
    adopted = officer.post(f"{BASE}/courses/", {"catalogue": "hipaa-privacy"}, format="json")
    assert adopted.status_code == 201, adopted.content
    assert (adopted.json()["title"], adopted.json()["catalogue"]) == ("HIPAA Privacy", "hipaa-privacy")
    own = officer.post(f"{BASE}/courses/", {"title": "MRI safety", "provider": "In house", "validity_months": 24,
                                            "evidence_required": False}, format="json")  # fmt: skip
    assert own.status_code == 201
    assert last_event(tenant_a, EventType.TRAINING_COURSE_ADOPTED).actor_user == compliance_a
    assert last_event(tenant_a, EventType.TRAINING_COURSE_CREATED).extra["validity_months"] == 24
    listed = radiologist.get(f"{BASE}/courses/").json()
    assert [c["title"] for c in listed["results"]] == ["HIPAA Privacy", "MRI safety"]
    assert officer.post(f"{BASE}/courses/", {"catalogue": "nope"}, format="json").status_code == 400
    assert_denied(radiologist.post(f"{BASE}/courses/", {"catalogue": "hipaa-privacy"}, format="json"), tenant_a,
                  radiologist_a)  # fmt: skip


def test_requirements_set_list_and_remove(officer, radiologist, tenant_a, radiologist_a, hipaa, south_course):
    response = officer.post(f"{BASE}/requirements/", {"course": str(hipaa.public_id), "role": "radiologist",
                                                      "blocking": False, "grace_days": 7}, format="json")  # fmt: skip
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["role"], body["blocking"], body["grace_days"]) == ("radiologist", False, 7)
    assert last_event(tenant_a, EventType.TRAINING_REQUIREMENT_SET).extra["grace_days"] == 7
    assert radiologist.get(f"{BASE}/requirements/").json()["count"] == 1
    # another tenant's course is the same 404 as a made-up one
    other, made_up = (officer.post(f"{BASE}/requirements/", {"course": cid, "role": "radiologist"}, format="json")
                      for cid in (str(south_course[0].public_id), random_id()))  # fmt: skip
    assert other.status_code == made_up.status_code == 404
    assert other.json() == made_up.json()
    assert_denied(radiologist.delete(f"{BASE}/requirements/{body['id']}/"), tenant_a, radiologist_a)
    assert officer.delete(f"{BASE}/requirements/{body['id']}/").status_code == 204
    assert last_event(tenant_a, EventType.TRAINING_REQUIREMENT_REMOVED).target_id == body["id"]
    with tenant_scope(tenant_a):
        assert not Requirement.objects.exists()


def test_a_learning_system_posts_a_completion_by_username(officer, tenant_a, radiologist_a, hipaa_required):
    response = officer.post(f"{BASE}/completions/", {"username": "north-radiologist", "course":
                            str(hipaa_required.course.public_id), "completed_on": today().isoformat(),
                            "evidence": io.BytesIO(PDF)}, format="multipart")  # fmt: skip
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["evidence_type"], body["username"]) == ("approved", "application/pdf",
                                                                          "north-radiologist")  # fmt: skip
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_RECORDED).target_id == body["id"]
    status = officer.get(f"{BASE}/people/{radiologist_a.subject_uuid}/status/").json()
    assert [(s["course_title"], s["state"], s["blocks_access"]) for s in status] == [
        ("HIPAA Security Awareness", "current", False)
    ]


def test_a_completion_that_is_not_a_pdf_or_image_is_a_400(officer, tenant_a, hipaa):
    response = officer.post(f"{BASE}/completions/", {"username": "north-compliance", "course": str(hipaa.public_id),
                            "completed_on": today().isoformat(), "evidence": io.BytesIO(b"MZ\x90 exe")},
                            format="multipart")  # fmt: skip
    assert response.status_code == 400
    assert "evidence" in problem(response)["errors"]


def test_a_member_self_reports_and_an_officer_approves(officer, radiologist, tenant_a, radiologist_a, hipaa):
    response = radiologist.post(f"{BASE}/completions/", {"course": str(hipaa.public_id), "completed_on":
                                today().isoformat(), "evidence": io.BytesIO(PDF)}, format="multipart")  # fmt: skip
    assert response.status_code == 201
    completion_id = response.json()["id"]
    assert response.json()["status"] == "pending"
    assert_denied(radiologist.post(f"{BASE}/completions/{completion_id}/approve/", {"reason": "mine"},
                                   format="json"), tenant_a, radiologist_a)  # fmt: skip
    assert officer.get(f"{BASE}/completions/?status=pending").json()["count"] == 1
    approved = officer.post(f"{BASE}/completions/{completion_id}/approve/", {"reason": "ok"}, format="json")
    assert approved.status_code == 200
    assert (approved.json()["status"], approved.json()["review_reason"]) == ("approved", "ok")
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_APPROVED).target_id == completion_id


def test_reject_and_supersede(officer, tenant_a, compliance_a, radiologist_a, technologist_a, hipaa):
    with tenant_scope(tenant_a):
        pending = services.completion_record(actor=technologist_a, user=technologist_a, course=hipaa,
                                             completed_on=today(), evidence=PDF)  # fmt: skip
    rejected = officer.post(f"{BASE}/completions/{pending.public_id}/reject/", {"reason": "blurred"}, format="json")
    assert (rejected.status_code, rejected.json()["status"]) == (200, "rejected")
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_REJECTED).extra["reason"] == "blurred"
    done = record(tenant_a, compliance_a, radiologist_a, hipaa, expires_on=today() + timedelta(days=3))
    fixed = officer.post(f"{BASE}/completions/{done.public_id}/supersede/",
                         {"completed_on": today().isoformat(), "reason": "wrong date"}, format="json")  # fmt: skip
    assert fixed.status_code == 201
    assert fixed.json()["supersedes"] == str(done.public_id)
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_SUPERSEDED).extra["reason"] == "wrong date"


def test_completions_of_another_tenant_are_the_same_404(officer, tenant_a, tenant_b, south_course, make_member):
    course, south_officer = south_course
    south_person = make_member(tenant_b, Role.RADIOLOGIST, "south-rad-2")
    theirs = record(tenant_b, south_officer, south_person, course, expires_on=today() + timedelta(days=30))
    for suffix, method, data in (
        ("", "get", None),
        ("approve/", "post", {"reason": "x"}),
        ("reject/", "post", {"reason": "x"}),
        ("supersede/", "post", {"completed_on": today().isoformat(), "reason": "x"}),
    ):
        assert_same_404(officer, {"other": f"{BASE}/completions/{theirs.public_id}/{suffix}",
                                  "random": f"{BASE}/completions/{random_id()}/{suffix}"}, method, data)  # fmt: skip
    assert_same_404(officer, {"other": f"{BASE}/people/{south_person.subject_uuid}/status/",
                              "random": f"{BASE}/people/{random_id()}/status/"})  # fmt: skip


def test_a_member_sees_only_their_own_completions_and_status(radiologist, officer, tenant_a, compliance_a,
                                                             radiologist_a, technologist_a, hipaa):  # fmt: skip
    record(tenant_a, compliance_a, radiologist_a, hipaa, expires_on=today() + timedelta(days=30))
    theirs = record(tenant_a, compliance_a, technologist_a, hipaa, expires_on=today() + timedelta(days=30))
    listed = radiologist.get(f"{BASE}/completions/").json()
    assert [c["username"] for c in listed["results"]] == ["north-radiologist"]
    assert radiologist.get(f"{BASE}/completions/{theirs.public_id}/").status_code == 404
    assert radiologist.get(f"{BASE}/people/{radiologist_a.subject_uuid}/status/").status_code == 200
    assert_denied(radiologist.get(f"{BASE}/people/{technologist_a.subject_uuid}/status/"), tenant_a, radiologist_a)
    assert officer.get(f"{BASE}/completions/").json()["count"] == 2


def test_csv_import_reports_rows_and_refuses_a_non_csv(officer, radiologist, tenant_a, radiologist_a, hipaa):
    body = (b"username,course,completed_on\n"
            b"north-radiologist,HIPAA Security Awareness,2026-01-10\n"
            b"ghost,HIPAA Security Awareness,2026-01-10\n")  # fmt: skip
    response = officer.post(f"{BASE}/completions/import/", {"file": io.BytesIO(body)}, format="multipart")
    assert response.status_code == 200, response.content
    assert response.json() == {"imported": 1, "errors": [{"row": 3, "reason": "No current member “ghost”."}]}
    assert last_event(tenant_a, EventType.TRAINING_COMPLETIONS_IMPORTED).extra["imported"] == 1
    refused = officer.post(f"{BASE}/completions/import/", {"file": io.BytesIO(PDF)}, format="multipart")
    assert refused.status_code == 400
    assert "file" in problem(refused)["errors"]
    with tenant_scope(tenant_a):
        assert Completion.objects.count() == 1
    assert_denied(radiologist.post(f"{BASE}/completions/import/", {"file": io.BytesIO(body)}, format="multipart"),
                  tenant_a, radiologist_a)  # fmt: skip


def test_matrix_csv(officer, radiologist, tenant_a, compliance_a, radiologist_a, hipaa_required):
    response = officer.get(f"{BASE}/matrix.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert b"north-radiologist,radiologist,HIPAA Security Awareness,missing" in response.content
    assert last_event(tenant_a, EventType.TRAINING_MATRIX_EXPORTED).actor_user == compliance_a
    assert_denied(radiologist.get(f"{BASE}/matrix.csv"), tenant_a, radiologist_a)
    assert len(events(tenant_a, EventType.TRAINING_MATRIX_EXPORTED)) == 1


def test_another_tenants_token_is_404(api_client_for, tenant_b, outsider_b, tenant_a):
    response = api_client_for(outsider_b, tenant_b).get(f"{BASE}/courses/")
    assert response.status_code == 404


def test_the_schema_describes_the_training_api(officer):
    response = officer.get("/api/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/t/{tenant}/training/courses/", "/api/v1/t/{tenant}/training/requirements/",
                 "/api/v1/t/{tenant}/training/completions/", "/api/v1/t/{tenant}/training/completions/import/",
                 "/api/v1/t/{tenant}/training/people/{person_id}/status/"):  # fmt: skip
        assert path in paths, path
    assert "post" in paths["/api/v1/t/{tenant}/training/completions/"]


def test_query_budget_of_the_status(officer, radiologist_a, hipaa_required, django_assert_max_num_queries):
    with django_assert_max_num_queries(20):
        assert officer.get(f"{BASE}/people/{radiologist_a.subject_uuid}/status/").status_code == 200
