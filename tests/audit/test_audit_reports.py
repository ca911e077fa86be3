"""Accounting of disclosures (HIPAA 164.528) and breach scoping (issue 12): exactly the seeded events and patients,
never another tenant's; patient IDs only by POST; page and CSV; each report recorded naming the patients."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.events import EventType
from tests.audit.helpers import events_of, last_event, record

pytestmark = pytest.mark.django_db

DISCLOSURES = "/t/north/audit/disclosures/"
BREACH = "/t/north/audit/breach-scope/"
P1 = {"type": "patient", "id": "PAT-0001", "name": "DOE^JANE"}
P2 = {"type": "patient", "id": "PAT-0002", "name": "ROE^RICHARD"}
S1 = {"type": "study", "id": "1.2.3.1"}
S2 = {"type": "study", "id": "1.2.3.2"}
S3 = {"type": "study", "id": "1.2.3.3"}


@pytest.fixture
def stream(tenant_a, tenant_b, radiologist_a, technologist_a, outsider_b):
    grantee = {"type": "user", "id": "u-1", "name": "dr-outside", "role": "grantee"}
    return {
        "export": record(
            tenant_a, EventType.DISCLOSURE_EXPORTED, actor=radiologist_a, participants=[P1, S1],
            extra={"phase": "downloaded", "recipient": "St Mary's oncology", "purpose": "second opinion"},
        ),
        "share": record(
            tenant_a, EventType.STUDY_SHARED, actor=radiologist_a, participants=[P1, S1, grantee],
            extra={"note": "tumour board"},
        ),
        "moved": record(
            tenant_a, EventType.INSTANCES_MOVED, participants=[P1, S1], system_principal="dicom:CT_ROOM1",
            source_address="10.1.2.3", extra={"destination_ae": "WORKSTATION9"},
        ),
        "read": record(tenant_a, EventType.INSTANCES_ACCESSED, actor=radiologist_a, participants=[P1, S1]),
        "search": record(
            tenant_a, EventType.STUDIES_QUERIED, actor=technologist_a, source_address="10.1.2.3",
            participants=[{"type": "query", "id": "studies"}, P1, S1, P2, S2, S3],
        ),
        "other_patient": record(tenant_a, EventType.DISCLOSURE_EXPORTED, actor=radiologist_a, participants=[P2, S2]),
        "b_export": record(tenant_b, EventType.DISCLOSURE_EXPORTED, actor=outsider_b, participants=[P1, S1]),
    }  # fmt: skip


def _csv(response):
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_accounting_lists_exactly_the_patients_disclosures(client_for, tenant_a, compliance_a, stream):
    response = client_for(compliance_a).post(DISCLOSURES, {"patient": "PAT-0001", "format": "page"})

    assert response.status_code == 200
    rows = response.context["rows"]
    assert [row["event"] for row in rows] == [stream["export"], stream["share"], stream["moved"]]
    export, share, moved = rows
    assert (export["recipient"], export["purpose"], export["phase"]) == (
        "St Mary's oncology",
        "second opinion",
        "downloaded",
    )
    assert (share["recipient"], share["purpose"]) == ("dr-outside", "tumour board")
    assert moved["recipient"] == "WORKSTATION9"
    assert export["studies"] == ["1.2.3.1"]
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.participants[-1] == {"type": "patient", "id": "PAT-0001", "role": "accounting of disclosures"}
    assert used.extra["results"] == 3


def test_accounting_with_every_access_and_as_csv(client_for, compliance_a, stream):
    response = client_for(compliance_a).post(DISCLOSURES, {"patient": "PAT-0001", "accesses": "on", "format": "csv"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = _csv(response)
    assert [row["event_id"] for row in rows] == [
        str(stream[name].public_id) for name in ("export", "share", "moved", "read", "search")
    ]
    assert rows[0]["recipient"] == "St Mary's oncology"


def test_accounting_period_and_patient_in_the_url_refused(client_for, compliance_a, stream):
    client = client_for(compliance_a)
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert client.post(DISCLOSURES, {"patient": "PAT-0001", "start": tomorrow}).context["rows"] == []
    refused = client.get(DISCLOSURES, {"patient": "PAT-0001"})
    assert refused.status_code == 400
    assert client.post(DISCLOSURES, {}).status_code == 400  # the patient is required


def test_breach_scope_of_an_address(client_for, tenant_a, compliance_a, stream):
    now = timezone.now()
    window = {"start": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
              "end": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")}  # fmt: skip
    response = client_for(compliance_a).post(BREACH, {"address": "10.1.2.3", **window})

    assert response.status_code == 200
    touched = {row.patient_id: row for row in response.context["rows"]}
    assert set(touched) == {"PAT-0001", "PAT-0002"}  # the C-MOVE and the search; not tenant B's export
    assert touched["PAT-0001"].studies == {"1.2.3.1"}
    assert touched["PAT-0002"].studies == {"1.2.3.2", "1.2.3.3"}
    assert touched["PAT-0001"].events == 2
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert {p["id"] for p in used.participants if p["type"] == "patient"} == {"PAT-0001", "PAT-0002"}


def test_breach_scope_of_a_user_and_of_a_device_as_csv(client_for, compliance_a, stream):
    now = timezone.now()
    window = {"start": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
              "end": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")}  # fmt: skip
    client = client_for(compliance_a)
    by_user = _csv(client.post(BREACH, {"user": "north-radiologist", "format": "csv", **window}))
    assert [(row["patient_id"], row["studies"]) for row in by_user] == [
        ("PAT-0001", "1.2.3.1"),
        ("PAT-0002", "1.2.3.2"),
    ]
    by_device = client.post(BREACH, {"device": "CT_ROOM1", **window}).context["rows"]
    assert [row.patient_id for row in by_device] == ["PAT-0001"]
    earlier = {"start": (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
               "end": (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")}  # fmt: skip
    assert client.post(BREACH, {"user": "north-radiologist", **earlier}).context["rows"] == []
    assert client.post(BREACH, window).status_code == 400  # nobody named


@pytest.mark.parametrize("url", [DISCLOSURES, BREACH])
def test_reports_refuse_members_without_permission_and_other_tenants(
    client_for, tenant_a, radiologist_a, outsider_b, stream, url
):
    assert client_for(radiologist_a).post(url, {"patient": "PAT-0001", "user": "x"}).status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a
    assert client_for(outsider_b).post(url, {"patient": "PAT-0001", "user": "x"}).status_code == 404
    assert client_for(outsider_b).get(url).status_code == 404
    assert events_of(tenant_a, EventType.AUDIT_LOG_USED) == []
