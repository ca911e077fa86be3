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


@pytest.mark.django_db
def test_an_event_is_appended_and_the_head_moved_in_one_statement_after_the_lock(tenant_a, radiologist_a):
    """The chain head is locked, then one statement inserts the event and moves the head (a data-modifying CTE):
    the row stored is the row hashed, every field read back as written, and the head names it."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from audit.models import AuditChain, AuditEvent

    first = record(tenant_a, EventType.LOGOUT, actor_username="x")
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        second = record(
            tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist",
            source_address="::ffff:10.1.2.3", participants=[{"type": "patient", "id": "P-1", "name": "DOE^J"}],
            extra={"query": "UGF0aWVudElEPVAtMQ==", "results": 1}, outcome_description="found",
        )  # fmt: skip
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) == 2, statements
    assert "FOR UPDATE" in statements[0]
    assert statements[1].startswith("WITH appended AS (INSERT INTO")
    with tenant_scope(tenant_a):
        stored = AuditEvent.objects.get(pk=second.pk)
        head = AuditChain.objects.get(key=AuditChain.key_for(tenant_a))
    assert stored.public_id == second.public_id
    assert (stored.sequence, stored.prev_hash) == (first.sequence + 1, first.hash)
    assert stored.compute_hash(first.hash) == stored.hash == second.hash
    assert stored.source_address == "10.1.2.3"
    assert stored.participants == [{"type": "patient", "id": "P-1", "name": "DOE^J"}]
    assert stored.extra == {"query": "UGF0aWVudElEPVAtMQ==", "results": 1}
    assert (stored.actor_user_id, stored.actor_role) == (radiologist_a.pk, "radiologist")
    assert (head.last_sequence, head.last_hash) == (stored.sequence, stored.hash)
    assert (second._state.adding, second._state.db) == (False, "default")


@pytest.mark.django_db(transaction=True)
def test_the_chain_head_is_read_locked_and_only_inside_a_transaction(tenant_a):
    """The writer's own statement for the chain's head refuses to run where its lock would end with it (as the
    ORM's select_for_update does), and inside a transaction reads the same row the ORM does."""
    from django.db import transaction

    from audit.models import AuditChain
    from audit.services import _chain_head_locked

    record(tenant_a)  # the chain exists
    key = AuditChain.key_for(tenant_a)
    with tenant_scope(tenant_a):
        with pytest.raises(transaction.TransactionManagementError):
            _chain_head_locked(key)
        with transaction.atomic():
            head = _chain_head_locked(key)
            assert head is not None
            expected = AuditChain.objects.get(key=key)
            assert (head.pk, head.last_sequence, head.last_hash) == (expected.pk, expected.last_sequence,
                                                                      expected.last_hash)  # fmt: skip
            assert _chain_head_locked("no-such-chain") is None


@pytest.mark.django_db
def test_participants_written_once_hash_and_store_as_before(tenant_a, radiologist_a):
    """The writer writes the participants' JSON once and uses that text for the hash and for the column. The hash
    is the one the full canonical form gives (what audit verification recomputes from the stored row), for
    participants with non-ASCII names, quotes, nested details and numbers; the column reads back equal."""
    from audit.models import AuditEvent, canonical_json

    participants = [
        {"type": "patient", "id": "P-\u00e9", "name": 'M\u00dcLLER^"J\u00f6rg"', "detail": {"b": 2, "a": [1.5, None]}},
        {"type": "studies.study", "id": "1.2.3", "name": "\u5c71\u7530^\u592a\u90ce", "role": "study"},
    ]
    event = record(tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, participants=participants)
    with tenant_scope(tenant_a):
        stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.participants == participants
    assert stored.canonical() == stored.canonical(canonical_json(stored.participants))
    assert stored.compute_hash(stored.prev_hash) == stored.hash == event.hash
    assert b"\\u00e9" in stored.canonical()  # ASCII only, as before

    # The written text is what the INSERT sends (the saving holds with this Django), and nothing else changes.
    from django.db import connection
    from django.db.models import sql

    from audit.services import _participants_param_written

    fields = [field for field in AuditEvent._meta.local_concrete_fields if not field.primary_key]
    query = sql.InsertQuery(AuditEvent)
    query.insert_values(fields, [stored])
    [(_, params)] = query.get_compiler(using=connection.alias).as_sql()
    written = canonical_json(stored.participants)
    sent = _participants_param_written(fields, list(params), written)
    index = fields.index(AuditEvent._meta.get_field("participants"))
    assert sent[index].dumps(sent[index].obj) == written
    assert [p for i, p in enumerate(sent) if i != index] == [p for i, p in enumerate(params) if i != index]
