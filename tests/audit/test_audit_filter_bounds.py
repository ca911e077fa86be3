"""Issue 8 #10: audit filters at the edges of the calendar (year 1, year 9999) are a 400 with the reason, through
the audit API and the audit page, never a 500."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/t/north/audit-events/"
CHANGES = "/api/v1/t/north/audit-changes/"
PAGE = "/t/north/audit/"
REASON = "between the years 1970 and 2999"


@pytest.mark.parametrize("url", [EVENTS, CHANGES])
@pytest.mark.parametrize(
    "params",
    [
        {"since": "0001-01-01T00:00:00Z"},
        {"until": "9999-12-31T23:59:59Z"},
        {"since": "0001-01-01T00:00:00", "until": "9999-12-31T23:59:59"},
    ],
)
def test_audit_api_filters_out_of_the_calendar_are_a_400(api_client_for, tenant_a, compliance_a, url, params):
    response = api_client_for(compliance_a, tenant_a).get(url, params)

    assert response.status_code == 400, response.content
    assert REASON in response.content.decode()


@pytest.mark.parametrize("params", [{"start": "0001-01-01"}, {"end": "9999-12-31"}, {"start": "9999-12-31"}])
def test_audit_page_filters_out_of_the_calendar_are_explained(client_for, tenant_a, compliance_a, params):
    response = client_for(compliance_a).get(PAGE, params)

    assert response.status_code == 400, response.content[:300]
    assert REASON in response.content.decode()
