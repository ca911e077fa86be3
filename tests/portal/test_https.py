"""HTTPS in production (SECURITY.md A9) through the whole middleware stack, with production's switches turned on:
machines calling the API or DICOMweb over plain HTTP are refused with no data, never redirected; pages are
redirected and get HSTS; every answer carrying patient data says Cache-Control: no-store."""

from __future__ import annotations

import json

import pytest

from tests.studies.dicomweb.reading import ingest

pytestmark = pytest.mark.django_db(transaction=True)  # ingestion runs on commit

HSTS = 31536000


@pytest.fixture
def production_https(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = HSTS
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    return settings


@pytest.fixture
def study(tenant_a):
    return ingest(tenant_a, patient_id="P-HTTPS", patient_name="HTTPSTEST^PATIENT", rows=16, columns=16)


def test_plain_http_to_the_api_and_dicomweb_is_refused_not_redirected(
    production_https, api_client_for, compliance_a, radiologist_a, tenant_a, study
):
    api = api_client_for(compliance_a, tenant_a)
    dicomweb = api_client_for(radiologist_a, tenant_a)
    for client, url in (
        (api, "/api/v1/t/north/audit-events/"),
        (dicomweb, "/dicomweb/north/studies?PatientID=P-HTTPS"),
        (dicomweb, f"/dicomweb/north/studies/{study.study_instance_uid}"),
    ):
        answer = client.get(url)
        assert answer.status_code == 403, url
        assert "Location" not in answer
        assert answer["Content-Type"] == "application/problem+json"
        body = json.loads(answer.content)
        assert body["code"] == "https_required"
        assert b"P-HTTPS" not in answer.content
        assert answer["Cache-Control"] == "no-store"
        assert answer["X-Request-ID"]
        # The same call over HTTPS is served.
        assert client.get(url, secure=True).status_code == 200, url


def test_plain_http_pages_are_redirected_and_https_pages_get_hsts(production_https, client_for, radiologist_a):
    client = client_for(radiologist_a)
    answer = client.get("/t/north/studies/")
    assert answer.status_code == 301
    assert answer["Location"] == "https://testserver/t/north/studies/"
    secure = client.get("/t/north/studies/", secure=True)
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == f"max-age={HSTS}; includeSubDomains"


def test_secure_cookies_on_sign_in(production_https, client, radiologist_a):
    answer = client.get("/accounts/login/", secure=True)
    assert answer.cookies["csrftoken"]["secure"] is True


def test_every_kind_of_answer_with_patient_data_is_no_store(
    api_client_for, client_for, compliance_a, radiologist_a, tenant_a, study
):
    """A sample of each kind: API, DICOMweb search, retrieve and rendered image (downloads), study pages."""
    api = api_client_for(compliance_a, tenant_a)
    dicomweb = api_client_for(radiologist_a, tenant_a)
    pages = client_for(radiologist_a)
    base = f"/dicomweb/north/studies/{study.study_instance_uid}"
    answers = {
        "api": api.get("/api/v1/t/north/audit-events/"),
        "qido": dicomweb.get("/dicomweb/north/studies?PatientID=P-HTTPS"),
        "metadata": dicomweb.get(f"{base}/metadata"),
        "retrieve": dicomweb.get(base, HTTP_ACCEPT='multipart/related; type="application/dicom"'),
        "rendered": dicomweb.get(f"{base}/rendered", HTTP_ACCEPT="image/png"),
        "study list": pages.get("/t/north/studies/"),
        "study page": pages.get(f"/t/north/studies/{study.public_id}/"),
    }
    for kind, answer in answers.items():
        assert answer.status_code == 200, (kind, answer.status_code)
        assert answer["Cache-Control"] == "no-store", kind
    assert b"P-HTTPS" in answers["qido"].content  # they do carry patient data
