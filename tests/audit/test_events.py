"""The table of audit events, and the shape of what `audit_event_record` writes."""

from __future__ import annotations

from datetime import UTC

import pytest

from audit.events import EVENTS, Action, EventSpec, EventType, Outcome
from audit.models import GENESIS_HASH
from tenants.scoping import tenant_scope
from tests.audit.helpers import record


def test_every_event_type_has_its_dicom_spec():
    assert set(EVENTS) == set(EventType)
    for event in EventType:
        spec = event.spec
        assert isinstance(spec, EventSpec)
        assert spec.event_id.value.startswith("110"), event
        assert spec.event_id.display, event
        assert spec.action in {Action.CREATE, Action.READ, Action.UPDATE, Action.DELETE, Action.EXECUTE}, event
        assert spec.description, event


def test_event_numbers_are_unique_and_grouped_by_hundreds():
    values = [e.value for e in EventType]
    assert len(values) == len(set(values))
    assert all(100 <= v < 1000 for v in values)


@pytest.mark.django_db
def test_recorded_events_are_utc_aware_and_chained(tenant_a):
    first = record(tenant_a, EventType.LOGIN_FAILED, actor_username="x", outcome=Outcome.MINOR_FAILURE)
    second = record(tenant_a, EventType.LOGOUT, actor_username="x")
    with tenant_scope(tenant_a):
        first.refresh_from_db()
    assert first.occurred_at.tzinfo is not None
    assert first.occurred_at.utcoffset().total_seconds() == 0
    assert first.occurred_at == first.occurred_at.astimezone(UTC)
    assert second.sequence == first.sequence + 1
    assert second.prev_hash == first.hash
    assert first.event_id == "110114"
    assert first.event_type_code == "110122"
    assert first.outcome == Outcome.MINOR_FAILURE
    assert first.tenant == tenant_a
    assert first.hash != GENESIS_HASH
