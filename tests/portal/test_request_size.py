"""Every request body bounded by its declared length before anything reads it (issue 14,
portal.middleware.RequestSizeLimitMiddleware): REQUEST_MAX_BYTES, or the setting a large-body view names."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from studies.models import IngestItem
from tenants.models import TrustedNetwork
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db
BATCH = "9b0c8a52-8f4e-4a44-9b64-5b1c8f3f7c11"


def test_an_api_body_over_the_limit_is_a_413_problem_and_nothing_is_written(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)
    body = {"network": "10.0.0.0/8", "label": "x" * 2000}
    with override_settings(REQUEST_MAX_BYTES=1000):
        response = client.post("/api/v1/t/north/networks/", body, format="json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == "The request body is larger than the limit of 1000 bytes."
    with tenant_scope(tenant_a):
        assert not TrustedNetwork.objects.exists()


def test_a_page_form_over_the_limit_is_a_413_page(client_for, tenant_a, admin_a):
    with override_settings(REQUEST_MAX_BYTES=1000):
        response = client_for(admin_a).post("/t/north/networks/", {"network": "10.0.0.0/8", "label": "x" * 2000})
    assert response.status_code == 413
    assert b"larger than the limit of 1000 bytes" in response.content
    with tenant_scope(tenant_a):
        assert not TrustedNetwork.objects.exists()


def test_the_upload_has_its_own_larger_limit(client_for, tenant_a, technologist_a):
    client = client_for(technologist_a)

    def upload():
        return client.post(
            "/t/north/upload/files/", {"batch": BATCH, "file": SimpleUploadedFile("x.dcm", b"\0" * 5000)}
        )

    with override_settings(REQUEST_MAX_BYTES=1000, UPLOAD_MAX_REQUEST_BYTES=100_000):
        taken = upload()
    with override_settings(REQUEST_MAX_BYTES=100_000, UPLOAD_MAX_REQUEST_BYTES=1000):
        refused = upload()
    assert taken.status_code == 201, taken.content  # read, then refused as not DICOM by the pipeline
    assert refused.status_code == 413
    with tenant_scope(tenant_a):
        assert IngestItem.objects.count() == 1


def test_ordinary_requests_pass(api_client_for, tenant_a, admin_a):
    assert api_client_for(admin_a, tenant_a).get("/api/v1/t/north/networks/").status_code == 200
