"""The rules of issue 12 beyond sign-ins and refusals: bursts of 404s across identifiers, bulk retrieval far above a
person's usual, and reads outside the tenant's working hours. Each runs on a seeded event stream where it must find
exactly the seeded anomalies and nothing else. And 404s inside a tenant are on the trail, by page and by API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from unittest import mock

import pytest

from audit.events import EventType
from audit.rules import security_rules_evaluate, working_hours_contain
from tenants.scoping import tenant_scope
from tests.audit.helpers import events_of, record

pytestmark = pytest.mark.django_db

READ = EventType.INSTANCES_RETRIEVED


def at(moment: datetime):
    """Record events as if at `moment` (the writer stamps them with timezone.now())."""
    return mock.patch("audit.services.timezone.now", return_value=moment)


def patients(prefix: str, count: int) -> list[dict[str, str]]:
    return [{"type": "patient", "id": f"{prefix}{n:04d}", "name": f"{prefix}^{n}"} for n in range(count)]


def evaluate(tenant, now):
    with tenant_scope(tenant):
        return security_rules_evaluate(tenant=tenant, now=now)


def found(alerts) -> set[tuple[str, str]]:
    return {(alert.kind, alert.subject) for alert in alerts}


def test_a_burst_of_404s_across_identifiers_is_found_and_repeats_of_one_are_not(
    tenant_a, tenant_b, radiologist_a, technologist_a, compliance_a
):
    guessed = [
        record(tenant_a, EventType.OBJECT_NOT_FOUND, actor=radiologist_a, extra={"identifier": f"public_id={n}"})
        for n in range(20)
    ]
    for _ in range(30):  # the same missing object, again and again: a broken bookmark, not guessing
        record(tenant_a, EventType.OBJECT_NOT_FOUND, actor=technologist_a, extra={"identifier": "public_id=same"})
    for n in range(19):  # one below the threshold
        record(tenant_a, EventType.OBJECT_NOT_FOUND, actor=compliance_a, extra={"identifier": f"public_id={n}"})
    for n in range(25):  # tenant B's burst is B's own
        record(tenant_b, EventType.OBJECT_NOT_FOUND, actor_username="b-person", extra={"identifier": f"id={n}"})

    raised = evaluate(tenant_a, datetime.now(UTC))

    assert found(raised) == {("not_found_burst", "north-radiologist")}
    assert raised[0].evidence == [str(e.public_id) for e in guessed]
    assert raised[0].severity == "high"
    assert evaluate(tenant_a, datetime.now(UTC)) == []  # once per window


def test_bulk_retrieval_far_above_a_persons_usual_is_found(tenant_a, tenant_b, radiologist_a, technologist_a,
                                                            compliance_a):  # fmt: skip
    now = datetime.now(UTC)
    # The fortnight before: the radiologist read 10 patients a day; the technologist, who runs the bulk exports,
    # 2,000 a day.
    for day in range(1, 14):
        with at(now - timedelta(days=day)):
            record(tenant_a, READ, actor=radiologist_a, participants=patients("R", 10))
            record(tenant_a, READ, actor=technologist_a, participants=patients("T", 2000))
    # The window: 60 patients each, and 49 for the compliance officer who never read before (under the minimum).
    with at(now - timedelta(minutes=5)):
        spree = [record(tenant_a, READ, actor=radiologist_a, participants=patients(prefix, 30)) for prefix in "XY"]
        record(tenant_a, READ, actor=technologist_a, participants=patients("Z", 60))
        record(tenant_a, READ, actor=compliance_a, participants=patients("C", 49))
        record(tenant_b, READ, actor_username="b-reader", participants=patients("B", 500))

    raised = evaluate(tenant_a, now)

    assert found(raised) == {("bulk_retrieval", "north-radiologist")}
    alert = raised[0]
    assert "60 patients" in alert.summary
    assert alert.evidence == [str(e.public_id) for e in spree]


def test_reads_outside_working_hours_are_found(tenant_a, tenant_b, radiologist_a, technologist_a):
    tenant_a.working_hours_start, tenant_a.working_hours_end = time(7, 0), time(19, 0)
    tenant_a.working_days, tenant_a.time_zone = "12345", "Europe/Oslo"
    tenant_a.save()
    monday_noon = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)  # 12:00 in Oslo
    sunday_noon = datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    tuesday_night = datetime(2026, 12, 1, 2, 30, tzinfo=UTC)  # 03:30 in Oslo
    with at(monday_noon - timedelta(minutes=3)):
        record(tenant_a, READ, actor=radiologist_a, participants=patients("M", 2))
        record(tenant_a, READ, actor=technologist_a, participants=patients("M", 2))
    with at(sunday_noon - timedelta(minutes=3)):
        weekend = record(tenant_a, READ, actor=radiologist_a, participants=patients("S", 1))
    with at(tuesday_night - timedelta(minutes=3)):
        night = record(tenant_a, READ, actor=technologist_a, participants=patients("N", 1))
        record(tenant_a, EventType.LOGIN_SUCCEEDED, actor=radiologist_a)  # not a read of patient data
        record(tenant_b, READ, actor_username="b-reader", participants=patients("B", 1))

    assert evaluate(tenant_a, monday_noon) == []
    weekend_alerts = evaluate(tenant_a, sunday_noon)
    assert found(weekend_alerts) == {("off_hours_access", "north-radiologist")}
    assert weekend_alerts[0].evidence == [str(weekend.public_id)]
    night_alerts = evaluate(tenant_a, tuesday_night)
    assert found(night_alerts) == {("off_hours_access", "north-technologist")}
    assert night_alerts[0].evidence == [str(night.public_id)]
    assert evaluate(tenant_b, tuesday_night) == []  # no working hours set: no such rule


def test_working_hours_across_midnight(tenant_a):
    tenant_a.working_hours_start, tenant_a.working_hours_end = time(22, 0), time(6, 0)
    tenant_a.working_days, tenant_a.time_zone = "1234567", "UTC"
    assert working_hours_contain(tenant_a, datetime(2026, 12, 1, 23, 0, tzinfo=UTC))
    assert working_hours_contain(tenant_a, datetime(2026, 12, 1, 5, 59, tzinfo=UTC))
    assert not working_hours_contain(tenant_a, datetime(2026, 12, 1, 6, 0, tzinfo=UTC))
    assert not working_hours_contain(tenant_a, datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    tenant_a.working_hours_start = None
    assert working_hours_contain(tenant_a, datetime(2026, 12, 1, 12, 0, tzinfo=UTC))


def test_a_404_inside_the_tenant_is_on_the_trail_by_page_and_by_api(tenant_a, tenant_b, radiologist_a, admin_b,
                                                                    client_for, api_client_for):  # fmt: skip
    missing = uuid.uuid4()
    page = client_for(radiologist_a).get(f"/t/north/studies/{missing}/")
    api = api_client_for(radiologist_a, tenant_a).get("/dicomweb/north/studies/1.2.826.0.1.999/metadata")
    assert (page.status_code, api.status_code) == (404, 404)

    events = events_of(tenant_a, EventType.OBJECT_NOT_FOUND)
    assert [e.extra["identifier"] for e in events] == [f"public_id={missing}", "study=1.2.826.0.1.999"]
    assert {e.actor_user_id for e in events} == {radiologist_a.pk}
    assert events[0].event_id == "110113"
    assert str(missing) not in events[0].outcome_description

    # Another tenant's person asking for tenant A's pages: no tenant is resolved, nothing lands on A's trail.
    assert client_for(admin_b).get(f"/t/north/studies/{missing}/").status_code == 404
    assert len(events_of(tenant_a, EventType.OBJECT_NOT_FOUND)) == 2
