"""The training pages: my training (self-report with a certificate), the matrix with its filters, CSV import
and export, a person's record, the approval queue, courses and requirements. For each: success, another tenant
(404), a member without the permission (403 and ACCESS_DENIED), and the audit record of what it changes."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest

from audit.events import EventType
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.training.helpers import PDF, last_event, record, today
from training import services
from training.models import Completion, Requirement


@pytest.fixture
def south_member(tenant_b, make_member):
    return make_member(tenant_b, Role.COMPLIANCE_OFFICER, "south-compliance")


def upload(content: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(content)
    f.name = name
    return f


def assert_denied(response, tenant, user):
    assert response.status_code == 403
    assert last_event(tenant, EventType.ACCESS_DENIED).actor_user == user


def test_my_training_shows_what_is_due_and_takes_a_self_report(client_for, tenant_a, radiologist_a,
                                                               hipaa_required):  # fmt: skip
    client = client_for(radiologist_a)
    page = client.get("/t/north/training/")
    assert page.status_code == 200
    assert "HIPAA Security Awareness" in page.content.decode()
    assert "Missing" in page.content.decode()
    response = client.post("/t/north/training/", {"course": str(hipaa_required.course.public_id),
                           "completed_on": today().isoformat(), "evidence": upload(PDF, "cert.pdf")})  # fmt: skip
    assert response.status_code == 302
    with tenant_scope(tenant_a):
        completion = Completion.objects.get()
    assert (completion.status, completion.evidence_type) == ("pending", "application/pdf")
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_RECORDED).actor_user == radiologist_a


def test_a_self_report_with_a_file_that_is_not_a_certificate_is_refused(client_for, tenant_a, radiologist_a,
                                                                        hipaa):  # fmt: skip
    response = client_for(radiologist_a).post("/t/north/training/", {"course": str(hipaa.public_id),
                                              "completed_on": today().isoformat(),
                                              "evidence": upload(b"#!/bin/sh\nrm -rf /", "cert.pdf")})  # fmt: skip
    assert response.status_code == 400
    assert "PDF, PNG or JPEG" in response.content.decode()
    with tenant_scope(tenant_a):
        assert not Completion.objects.exists()


def test_another_tenants_training_pages_are_404(client_for, south_member):
    client = client_for(south_member)
    for url in ("/t/north/training/", "/t/north/training/matrix/", "/t/north/training/approvals/",
                "/t/north/training/courses/", "/t/north/training/matrix.csv"):  # fmt: skip
        assert client.get(url).status_code == 404, url


def test_the_matrix_shows_people_by_course_and_filters_by_role(client_for, tenant_a, compliance_a, radiologist_a,
                                                               technologist_a, hipaa_required):  # fmt: skip
    record(tenant_a, compliance_a, radiologist_a, hipaa_required.course, expires_on=today() + timedelta(days=10))
    client = client_for(compliance_a)
    html = client.get("/t/north/training/matrix/").content.decode()
    assert "north-radiologist" in html
    assert "Expires within 30 days" in html
    filtered = client.get("/t/north/training/matrix/?role=technologist").content.decode()
    assert "north-radiologist" not in filtered
    assert "north-technologist" in filtered
    export = client.get("/t/north/training/matrix.csv")
    assert export.status_code == 200
    assert b"north-radiologist,radiologist,HIPAA Security Awareness,expiring" in export.content
    assert last_event(tenant_a, EventType.TRAINING_MATRIX_EXPORTED).actor_user == compliance_a


def test_clinicians_get_403_on_the_officers_pages(client_for, tenant_a, radiologist_a, technologist_a,
                                                  hipaa):  # fmt: skip
    client = client_for(radiologist_a)
    for url in (
        "/t/north/training/matrix/",
        "/t/north/training/approvals/",
        "/t/north/training/courses/",
        "/t/north/training/matrix.csv",
        f"/t/north/training/people/{technologist_a.subject_uuid}/",
    ):
        assert_denied(client.get(url), tenant_a, radiologist_a)


def test_an_auditor_sees_the_matrix_but_does_not_manage(client_for, tenant_a, auditor_a, hipaa):
    client = client_for(auditor_a)
    assert client.get("/t/north/training/matrix/").status_code == 200
    assert_denied(client.get("/t/north/training/approvals/"), tenant_a, auditor_a)


def test_import_page_reports_refused_rows(client_for, tenant_a, compliance_a, radiologist_a, hipaa):
    body = (b"username,course,completed_on,expires_on\n"
            b"north-radiologist,HIPAA Security Awareness,2026-01-10,\n"
            b"north-radiologist,HIPAA Security Awareness,yesterday,\n")  # fmt: skip
    response = client_for(compliance_a).post("/t/north/training/import/", {"file": upload(body, "lms.csv")})
    assert response.status_code == 200
    html = response.content.decode()
    assert "1 imported, 1 refused" in html
    assert "Row 3:" in html
    not_csv = client_for(compliance_a).post("/t/north/training/import/", {"file": upload(PDF, "lms.csv")})
    assert not_csv.status_code == 400
    assert "Nothing was imported" in not_csv.content.decode()
    with tenant_scope(tenant_a):
        assert Completion.objects.count() == 1


def test_the_approval_queue_approves_and_rejects_with_a_reason(client_for, tenant_a, compliance_a, radiologist_a,
                                                               technologist_a, hipaa):  # fmt: skip
    with tenant_scope(tenant_a):
        first = services.completion_record(actor=radiologist_a, user=radiologist_a, course=hipaa,
                                           completed_on=today(), evidence=PDF)  # fmt: skip
        second = services.completion_record(actor=technologist_a, user=technologist_a, course=hipaa,
                                            completed_on=today(), evidence=PDF)  # fmt: skip
    client = client_for(compliance_a)
    html = client.get("/t/north/training/approvals/").content.decode()
    assert f"pending-{first.public_id}" in html
    assert f"pending-{second.public_id}" in html
    evidence = client.get(f"/t/north/training/completions/{first.public_id}/evidence/")
    assert (evidence.status_code, evidence.content, evidence["Content-Type"]) == (200, PDF, "application/pdf")
    assert last_event(tenant_a, EventType.TRAINING_EVIDENCE_VIEWED).actor_user == compliance_a
    unknown = client.post(f"/t/north/training/approvals/{first.public_id}/delete/", {"reason": "typo"})
    assert unknown.status_code == 404  # an unknown verdict is not a rejection
    no_reason = client.post(f"/t/north/training/approvals/{first.public_id}/approve/", {"reason": ""})
    assert no_reason.status_code == 400
    assert client.post(f"/t/north/training/approvals/{first.public_id}/approve/",
                       {"reason": "certificate checked"}).status_code == 302  # fmt: skip
    assert client.post(f"/t/north/training/approvals/{second.public_id}/reject/",
                       {"reason": "wrong course"}).status_code == 302  # fmt: skip
    with tenant_scope(tenant_a):
        assert {c.status for c in Completion.objects.all()} == {"approved", "rejected"}
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_REJECTED).extra["reason"] == "wrong course"


def test_someone_elses_certificate_is_404_for_a_member(client_for, tenant_a, compliance_a, radiologist_a,
                                                       technologist_a, hipaa):  # fmt: skip
    theirs = record(tenant_a, compliance_a, technologist_a, hipaa, expires_on=today() + timedelta(days=3))
    response = client_for(radiologist_a).get(f"/t/north/training/completions/{theirs.public_id}/evidence/")
    assert response.status_code == 404


def test_courses_page_adopts_creates_and_requires(client_for, tenant_a, compliance_a):
    services.catalogue_ensure()
    client = client_for(compliance_a)
    assert client.get("/t/north/training/courses/").status_code == 200
    assert client.post("/t/north/training/courses/", {"action": "adopt",
                       "catalogue": "radiation-safety"}).status_code == 302  # fmt: skip
    assert client.post("/t/north/training/courses/", {"action": "create", "title": "Contrast agents",
                       "provider": "Pharmacy", "validity_months": 12}).status_code == 302  # fmt: skip
    with tenant_scope(tenant_a):
        from training.models import Course

        course = Course.objects.get(title="Radiation Safety")
    response = client.post("/t/north/training/courses/", {"action": "require", "course": str(course.public_id),
                           "role": "technologist", "blocking": "on", "grace_days": 30})  # fmt: skip
    assert response.status_code == 302
    with tenant_scope(tenant_a):
        requirement = Requirement.objects.get()
    assert (requirement.role, requirement.blocking, requirement.grace_days) == ("technologist", True, 30)
    assert last_event(tenant_a, EventType.TRAINING_REQUIREMENT_SET).actor_user == compliance_a
    html = client.get("/t/north/training/courses/").content.decode()
    assert "Technologist: blocks, 30 days" in html


def test_the_navigation_links_the_training_pages(client_for, compliance_a, radiologist_a, tenant_a):
    officer = client_for(compliance_a).get("/t/north/").content.decode()
    assert "/t/north/training/matrix/" in officer
    assert "/t/north/training/approvals/" in officer
    clinician = client_for(radiologist_a).get("/t/north/").content.decode()
    assert "/t/north/training/" in clinician
    assert "/t/north/training/matrix/" not in clinician


def test_the_matrix_charts_coverage_and_expiries(client_for, tenant_a, compliance_a, radiologist_a, make_member,
                                                 hipaa_required):  # fmt: skip
    from training.selectors import training_charts

    second = make_member(tenant_a, Role.RADIOLOGIST, "north-rad-2")
    record(tenant_a, compliance_a, radiologist_a, hipaa_required.course, expires_on=today() + timedelta(days=10))
    record(tenant_a, compliance_a, second, hipaa_required.course, expires_on=today() - timedelta(days=10))
    with tenant_scope(tenant_a):
        charts = training_charts(actor=compliance_a)
    assert len(charts["coverage"]) == 12
    assert charts["coverage"][-1].percent == 50  # one of two radiologists is current today
    assert charts["coverage"][0].percent == 100  # 11 months ago both were (each completed a year before expiry)
    assert charts["coverage"][-2].label == (today().replace(day=1) - timedelta(days=1)).strftime("%b %y")
    assert [bar.value for bar in charts["expiries"]][:3] == [0, 1, 0]  # day 10 falls in the second week
    html = client_for(compliance_a).get("/t/north/training/matrix/").content.decode()
    assert 'id="coverage-chart"' in html
    assert "<svg" in html
    assert "50%" in html


def test_the_operators_page_shows_whether_vendor_staff_training_is_current(client_for, tenant_a, compliance_a,
                                                                           radiologist_a, platform_staff):  # fmt: skip
    from training.models import CatalogueCourse, OperatorCompletion

    services.catalogue_ensure()
    for code in ("hipaa-security-awareness", "hipaa-privacy"):
        OperatorCompletion.objects.create(user=platform_staff, course=CatalogueCourse.objects.get(code=code),
                                          completed_on=today() - timedelta(days=30),
                                          expires_on=today() + timedelta(days=300))  # fmt: skip
    response = client_for(compliance_a).get("/t/north/training/operators/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "ops-staff" in html or platform_staff.get_full_name() in html
    assert '<span class="badge ok">Yes</span>' in html
    assert_denied(client_for(radiologist_a).get("/t/north/training/operators/"), tenant_a, radiologist_a)


def test_the_operators_page_of_another_tenant_is_404(client_for, south_member):
    assert client_for(south_member).get("/t/north/training/operators/").status_code == 404
