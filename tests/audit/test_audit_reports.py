"""Accounting of disclosures (HIPAA 164.528) and breach scoping (issue 12): exactly the seeded events and patients,
never another tenant's; patient IDs only by POST; page and CSV; each report recorded naming the patients."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from audit.events import EventType
from audit.selectors import accounting_period_start, audit_disclosures_for_patient
from tenants.scoping import tenant_scope
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


# The six-year look-back and the suspension (HIPAA 164.528(a)(1) and (a)(2))
# ------------------------------------------------------------------------------

SUSPEND = "/t/north/audit/disclosures/suspend/"


def _recorded_at(monkeypatch, when, tenant, event, **kwargs):
    """Seed an event as if it had been written at `when`: the writer reads the clock, so the clock is set."""
    import audit.services

    with monkeypatch.context() as patched:
        patched.setattr(audit.services, "timezone", SimpleNamespace(now=lambda: when))
        return record(tenant, event, **kwargs)


def test_accounting_covers_six_years_back_and_no_more(client_for, tenant_a, radiologist_a, compliance_a, monkeypatch):
    now = timezone.now()
    six_years_ago = accounting_period_start(now)
    assert (now - six_years_ago).days in (2191, 2192)  # six calendar years, one or two of them leap years
    just_outside = _recorded_at(
        monkeypatch, six_years_ago - timedelta(days=1), tenant_a, EventType.DISCLOSURE_EXPORTED,
        actor=radiologist_a, participants=[P1, S1], extra={"recipient": "old", "purpose": "public health"},
    )  # fmt: skip
    just_inside = _recorded_at(
        monkeypatch, six_years_ago + timedelta(days=1), tenant_a, EventType.DISCLOSURE_EXPORTED,
        actor=radiologist_a, participants=[P1, S1], extra={"recipient": "county", "purpose": "public health"},
    )  # fmt: skip
    recent = record(tenant_a, EventType.DISCLOSURE_EXPORTED, actor=radiologist_a, participants=[P1, S1])
    assert just_outside.occurred_at < six_years_ago < just_inside.occurred_at

    client = client_for(compliance_a)
    rows = client.post(DISCLOSURES, {"patient": "PAT-0001"}).context["rows"]
    assert [row["event"] for row in rows] == [just_inside, recent]
    # an explicit start earlier than the look-back does not reach past it
    asked = client.post(DISCLOSURES, {"patient": "PAT-0001", "start": "2000-01-01"})
    assert [row["event"] for row in asked.context["rows"]] == [just_inside, recent]
    assert (rows[0]["recipient"], rows[0]["purpose"]) == ("county", "public health")


def test_a_suspended_disclosure_is_withheld_until_the_suspension_ends(
    client_for, tenant_a, radiologist_a, compliance_a, stream, monkeypatch
):
    client = client_for(compliance_a)
    until = timezone.now() + timedelta(days=30)
    response = client.post(SUSPEND, {
        "disclosure": str(stream["share"].public_id), "until": until.strftime("%Y-%m-%dT%H:%M"),
        "agency": "County sheriff", "statement": "investigation 42",
    })  # fmt: skip

    assert response.status_code == 200
    suspension = last_event(tenant_a, EventType.DISCLOSURE_ACCOUNTING_SUSPENDED)
    assert suspension.actor_user == compliance_a
    assert suspension.extra["disclosure"] == str(stream["share"].public_id)
    assert suspension.extra["agency"] == "County sheriff"
    assert {"type": "patient", "id": "PAT-0001", "name": "DOE^JANE"} in suspension.participants
    assert datetime.fromisoformat(suspension.extra["until"]) == until.replace(second=0, microsecond=0)

    rows = client.post(DISCLOSURES, {"patient": "PAT-0001"}).context["rows"]
    assert [row["event"] for row in rows] == [stream["export"], stream["moved"]]
    with tenant_scope(tenant_a):
        # the day after the suspension ends, the disclosure is in the accounting again
        after = audit_disclosures_for_patient(actor=compliance_a, patient_id="PAT-0001", now=until + timedelta(days=1))
        during = audit_disclosures_for_patient(actor=compliance_a, patient_id="PAT-0001", now=until - timedelta(days=1))
        assert list(after) == [stream["export"], stream["share"], stream["moved"]]
        assert list(during) == [stream["export"], stream["moved"]]


def test_a_suspension_refuses_a_past_end_and_no_agency(client_for, tenant_a, compliance_a, stream):
    client = client_for(compliance_a)
    past = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    future = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    ident = str(stream["export"].public_id)
    assert client.post(SUSPEND, {"disclosure": ident, "until": past, "agency": "FBI"}).status_code == 400
    assert client.post(SUSPEND, {"disclosure": ident, "until": future, "agency": "  "}).status_code == 400
    assert events_of(tenant_a, EventType.DISCLOSURE_ACCOUNTING_SUSPENDED) == []
    # a read, not a disclosure, cannot be suspended: 404 as missing
    assert client.post(SUSPEND, {"disclosure": str(stream["read"].public_id), "until": future,
                                 "agency": "FBI"}).status_code == 404  # fmt: skip


def test_a_suspension_of_another_tenants_disclosure_or_by_a_member_without_the_right_is_refused(
    client_for, tenant_a, tenant_b, radiologist_a, compliance_a, stream
):
    future = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    theirs = {"disclosure": str(stream["b_export"].public_id), "until": future, "agency": "FBI"}
    assert client_for(compliance_a).post(SUSPEND, theirs).status_code == 404
    ours = {"disclosure": str(stream["export"].public_id), "until": future, "agency": "FBI"}
    assert client_for(radiologist_a).post(SUSPEND, ours).status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a
    assert events_of(tenant_a, EventType.DISCLOSURE_ACCOUNTING_SUSPENDED) == []
    assert events_of(tenant_b, EventType.DISCLOSURE_ACCOUNTING_SUSPENDED) == []
    rows = client_for(compliance_a).post(DISCLOSURES, {"patient": "PAT-0001"}).context["rows"]
    assert [row["event"] for row in rows] == [stream["export"], stream["share"], stream["moved"]]
