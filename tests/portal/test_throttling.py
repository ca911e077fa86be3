"""Rate limits on the API: per user, whichever token or address the user calls with."""

from __future__ import annotations

import pytest
from rest_framework.throttling import SimpleRateThrottle

pytestmark = pytest.mark.django_db


@pytest.fixture
def low_limits(monkeypatch):
    # DRF reads the rates once at import; these are the limits this test runs under.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "2/min"})


def test_a_user_is_limited_across_tokens_and_addresses(low_limits, api_client_for, tenant_a, radiologist_a):
    first, second = api_client_for(radiologist_a, tenant_a), api_client_for(radiologist_a, tenant_a)
    codes = [
        first.get("/api/v1/t/north/tokens/", REMOTE_ADDR="10.0.0.1").status_code,
        second.get("/api/v1/t/north/tokens/", REMOTE_ADDR="10.0.0.2").status_code,
        first.get("/api/v1/t/north/tokens/", REMOTE_ADDR="10.0.0.3").status_code,
    ]
    refused = second.get("/api/v1/t/north/tokens/", REMOTE_ADDR="10.0.0.4")
    assert codes == [200, 200, 200]
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert refused.json()["status"] == 429


def test_another_user_is_not_slowed_down(low_limits, api_client_for, tenant_a, radiologist_a, technologist_a):
    busy = api_client_for(radiologist_a, tenant_a)
    for _ in range(3):
        busy.get("/api/v1/t/north/tokens/")
    assert busy.get("/api/v1/t/north/tokens/").status_code == 429
    assert api_client_for(technologist_a, tenant_a).get("/api/v1/t/north/tokens/").status_code == 200


def test_a_view_with_a_rate_limit_action_is_counted_by_the_policy_alone(
    low_limits, api_client_for, tenant_a, radiologist_a
):
    # DICOMweb searches name the "search" action of RATE_LIMITS: that policy is their one limit (per person, token
    # and address); DRF's per-user throttle, 3/min here, does not count them.
    client = api_client_for(radiologist_a, tenant_a)
    searches = [
        client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+json").status_code for _ in range(5)
    ]
    assert searches == [204] * 5
    # The API views that name no action keep DRF's throttle, and the searches above did not count against it.
    codes = [client.get("/api/v1/t/north/tokens/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
