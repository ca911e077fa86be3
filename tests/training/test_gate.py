"""The training gate through the real doors: a radiologist whose required training lapsed yesterday gets no
patient data from the study pages, the REST API, QIDO-RS, WADO-RS, STOW-RS or the export page; each refusal is a
403 naming the course and the date, and an ACCESS_DENIED event with the machine-readable code. Recording a
completion restores access at the next request. A warn-only requirement warns and lets them in."""

from __future__ import annotations

from datetime import timedelta

import pytest

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import post_parts
from tests.studies.dicomweb.reading import ingest
from tests.training.helpers import events, last_event, record, require, today
from training import services

pytestmark = pytest.mark.django_db(transaction=True)
YESTERDAY = today() - timedelta(days=1)


@pytest.fixture
def study(tenant_a):
    return ingest(tenant_a, patient_id="P-GATE", patient_name="GATE^PATIENT", accession="G100")


@pytest.fixture
def lapsed(tenant_a, compliance_a, radiologist_a, hipaa_required):
    """north-radiologist's HIPAA Security Awareness expired yesterday; the requirement blocks with no grace."""
    record(tenant_a, compliance_a, radiologist_a, hipaa_required.course, expires_on=YESTERDAY)
    return radiologist_a


def assert_refused_api(response, tenant, user, *, code="training_expired"):
    assert response.status_code == 403, response.content
    body = response.json()
    assert body["code"] == code
    assert "HIPAA Security Awareness" in body["detail"]
    if code == "training_expired":
        assert f"lapsed on {YESTERDAY.isoformat()}" in body["detail"]
    assert "GATE" not in response.content.decode()  # no patient data in the refusal
    event = last_event(tenant, EventType.ACCESS_DENIED)
    assert event.actor_user == user
    assert event.extra["code"] == code
    assert "HIPAA Security Awareness" in event.outcome_description


def assert_refused_page(response, tenant, user):
    assert response.status_code == 403
    html = response.content.decode()
    assert f"Training “HIPAA Security Awareness” lapsed on {YESTERDAY.isoformat()}" in html
    assert "/t/north/training/" in html
    assert "GATE^PATIENT" not in html
    assert "P-GATE" not in html
    event = last_event(tenant, EventType.ACCESS_DENIED)
    assert (event.actor_user, event.extra["code"]) == (user, "training_expired")


def test_qido_is_refused_with_the_course_and_date(api_client_for, tenant_a, lapsed, study):
    response = api_client_for(lapsed, tenant_a).get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+json")
    assert_refused_api(response, tenant_a, lapsed)
    assert events(tenant_a, EventType.STUDIES_QUERIED) == []


def test_wado_retrieve_and_metadata_are_refused(api_client_for, tenant_a, lapsed, study):
    client = api_client_for(lapsed, tenant_a)
    base = f"/dicomweb/north/studies/{study.study_instance_uid}"
    assert_refused_api(client.get(f"{base}/metadata", HTTP_ACCEPT="application/dicom+json"), tenant_a, lapsed)
    response = client.get(base, HTTP_ACCEPT='multipart/related; type="application/dicom"')
    assert response.status_code == 403
    assert events(tenant_a, EventType.INSTANCES_RETRIEVED) == []


def test_stow_is_refused_and_stores_nothing(api_client_for, tenant_a, lapsed):
    response = post_parts(api_client_for(lapsed, tenant_a), "/dicomweb/north/studies", [make_instance()])
    assert_refused_api(response, tenant_a, lapsed)
    with tenant_scope(tenant_a):
        assert not IngestItem.objects.filter(source=IngestItem.Source.STOWRS).exists()


def test_rest_share_is_refused(api_client_for, tenant_a, lapsed, technologist_a, study):
    response = api_client_for(lapsed, tenant_a).post(
        f"/api/v1/t/north/studies/{study.public_id}/shares/",
        {"grantee": technologist_a.username, "days": 1},
        format="json",
    )
    assert_refused_api(response, tenant_a, lapsed)


def test_study_page_list_and_export_page_are_refused_with_the_reason(client_for, tenant_a, lapsed, study):
    client = client_for(lapsed)
    for url in (f"/t/north/studies/{study.public_id}/", "/t/north/studies/",
                f"/t/north/studies/{study.public_id}/export/"):  # fmt: skip
        assert_refused_page(client.get(url), tenant_a, lapsed)


def test_the_lapsed_person_still_reaches_their_training_page(client_for, tenant_a, lapsed):
    response = client_for(lapsed).get("/t/north/training/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "access blocked" in html
    assert 'id="self-report"' in html


def test_a_new_completion_restores_access_at_the_next_request(api_client_for, tenant_a, compliance_a, lapsed,
                                                              hipaa_required, study):  # fmt: skip
    client = api_client_for(lapsed, tenant_a)
    assert client.get("/dicomweb/north/studies").status_code == 403
    record(tenant_a, compliance_a, lapsed, hipaa_required.course, expires_on=today() + timedelta(days=365))
    response = client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+json")
    assert response.status_code == 200
    assert len(response.json()) == 1


def test_a_self_report_restores_access_only_once_approved(api_client_for, tenant_a, compliance_a, lapsed,
                                                          hipaa_required, study):  # fmt: skip
    from tests.training.helpers import PDF

    client = api_client_for(lapsed, tenant_a)
    with tenant_scope(tenant_a):
        pending = services.completion_record(actor=lapsed, user=lapsed, course=hipaa_required.course,
                                             completed_on=today(), evidence=PDF)  # fmt: skip
    assert client.get("/dicomweb/north/studies").status_code == 403
    with tenant_scope(tenant_a):
        services.completion_approve(actor=compliance_a, completion=pending, reason="checked")
    assert client.get("/dicomweb/north/studies").status_code == 200


def test_a_missing_training_is_refused_as_missing(api_client_for, tenant_a, radiologist_a, hipaa_required, study):
    response = api_client_for(radiologist_a, tenant_a).get("/dicomweb/north/studies")
    assert_refused_api(response, tenant_a, radiologist_a, code="training_missing")


def test_grace_days_for_a_new_requirement_let_people_in(api_client_for, tenant_a, compliance_a, radiologist_a,
                                                        hipaa, study):  # fmt: skip
    require(tenant_a, compliance_a, hipaa, grace_days=14)
    assert api_client_for(radiologist_a, tenant_a).get("/dicomweb/north/studies").status_code == 200


def test_a_warn_only_requirement_warns_and_lets_them_in(client_for, api_client_for, tenant_a, compliance_a,
                                                        radiologist_a, hipaa, study):  # fmt: skip
    require(tenant_a, compliance_a, hipaa, blocking=False)
    record(tenant_a, compliance_a, radiologist_a, hipaa, expires_on=YESTERDAY)
    assert api_client_for(radiologist_a, tenant_a).get("/dicomweb/north/studies").status_code == 200
    response = client_for(radiologist_a).get(f"/t/north/studies/{study.public_id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="training-warnings"' in html
    assert "HIPAA Security Awareness" in html
    assert "a warning only" in html


def test_roles_without_the_requirement_are_untouched(api_client_for, tenant_a, technologist_a, hipaa_required, study):
    assert api_client_for(technologist_a, tenant_a).get("/dicomweb/north/studies").status_code == 200


def test_another_tenants_requirement_does_not_gate_here(api_client_for, tenant_b, outsider_b, hipaa_required,
                                                        study):  # fmt: skip
    # outsider_b is a radiologist in south, which requires nothing: north's requirement is north's alone.
    ingest(tenant_b, patient_id="P-SOUTH")
    assert api_client_for(outsider_b, tenant_b).get("/dicomweb/south/studies").status_code == 200


def test_break_glass_is_not_a_way_around(api_client_for, tenant_a, make_member, compliance_a, hipaa, study):
    from studies.services.break_glass import break_glass_start
    from tenants import access
    from tests.studies.access_fixtures import fresh_code, referrer_make

    referrer = referrer_make(make_member, tenant_a)
    with tenant_scope(tenant_a):  # an emergency grant opened while their training was current ...
        break_glass_start(actor=referrer, study=study, reason="Unconscious patient", otp_token=fresh_code(referrer))
    client = api_client_for(referrer, tenant_a)
    assert client.get(f"/dicomweb/north/studies/{study.study_instance_uid}/metadata").status_code == 200
    require(tenant_a, compliance_a, hipaa, role=Role.REFERRING_PHYSICIAN)  # ... then a requirement they lack
    assert_refused_api(
        client.get(f"/dicomweb/north/studies/{study.study_instance_uid}/metadata"), tenant_a, referrer,
        code="training_missing",
    )  # fmt: skip
    with tenant_scope(tenant_a), pytest.raises(access.GateRefused):
        break_glass_start(actor=referrer, study=study, reason="Again", otp_token=fresh_code(referrer, step=1))


def test_the_gate_asks_one_statement_and_a_correction_counts_at_once(
    tenant_a, compliance_a, radiologist_a, hipaa_required, django_assert_num_queries
):
    """The gate's question is one statement when it lets someone in, and it is asked afresh each time: a
    correction that moves the only current completion's expiry into the past blocks at the next call (the
    superseded completion no longer counts), as `person_status` says."""
    from training.selectors import person_status, training_block_get

    current = record(tenant_a, compliance_a, radiologist_a, hipaa_required.course,
                     expires_on=today() + timedelta(days=365))  # fmt: skip
    with tenant_scope(tenant_a):
        with django_assert_num_queries(1):
            assert training_block_get(user=radiologist_a) is None
        earlier = YESTERDAY - timedelta(days=365)
        services.completion_supersede(actor=compliance_a, completion=current, completed_on=earlier,
                                      expires_on=YESTERDAY, reason="wrong date")  # fmt: skip
        block = training_block_get(user=radiologist_a)
        assert block is not None
        assert block.blocks
        assert (block.course.title, block.expires_on, block.reason_code) == (
            "HIPAA Security Awareness", YESTERDAY, "training_expired")  # fmt: skip
        assert [s.requirement for s in person_status(user=radiologist_a) if s.blocks] == [block.requirement]
