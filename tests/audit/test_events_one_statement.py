"""An event written by a caller outside any transaction (a read's Query or Retrieve event) is one statement and one
round trip (audit/services.py `_event_append_alone`): PostgreSQL locks the chain's head, takes the next sequence,
hashes the event over the same bytes as `AuditEvent.compute_hash`, inserts it and moves the head, as the implicit
transaction of that statement. It is committed before the writer returns; a failed write raises, leaves nothing and
no open transaction, and the tenant scope is sent again before the next statement."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from audit import services as audit_services
from audit.events import EventType
from audit.models import AuditChain, AuditEvent
from tenants.scoping import tenant_scope
from tests.audit.helpers import events_of, record
from tests.studies.dicomweb.test_qido import north as north  # the fixture, shared

pytestmark = pytest.mark.django_db(transaction=True)


def _sent(calls: list[str]) -> Any:
    def wrapper(execute, sql, params, many, context):
        calls.append(sql)
        return execute(sql, params, many, context)

    return connection.execute_wrapper(wrapper)


def _head(tenant: Any) -> tuple[int, str]:
    with tenant_scope(tenant):
        chain = AuditChain.objects.get(key=AuditChain.key_for(tenant))
    return chain.last_sequence, chain.last_hash


def _server_scope() -> str:
    with connection.connection.cursor() as cursor:  # the driver's own cursor: no scope sent in front
        cursor.execute("SELECT current_setting('enclave.tenant_id', true)")
        return cursor.fetchone()[0]


def _transaction_status() -> int:
    return connection.connection.info.transaction_status


def test_an_event_outside_a_transaction_is_one_round_trip_committed_and_hashed_as_verified(tenant_a, radiologist_a):
    from psycopg.pq import TransactionStatus

    from audit.selectors import audit_chain_verify
    from tests.chains import chain_of

    record(tenant_a, EventType.LOGOUT, actor_username="x")  # the chain's head exists
    before = _head(tenant_a)
    calls: list[str] = []
    extra = {"query": {"PatientName": "MÜLLER^Zoë*", "nested": [1, None, '"q" \u2028']}, "count": 3}
    with _sent(calls), CaptureQueriesContext(connection) as queries:
        event = record(
            tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist", extra=extra,
            participants=[{"type": "study", "id": "1.2.3", "name": "Ünïcode"}, {"type": "patient", "id": "P1"}],
        )  # fmt: skip
    assert connection.get_autocommit()
    assert not connection.in_atomic_block
    assert _transaction_status() == TransactionStatus.IDLE  # committed, nothing left open
    assert len(calls) == 1  # one round trip: the lock, the hash, the INSERT and the head's move
    written = [query["sql"] for query in queries.captured_queries]
    assert len(written) == 1
    assert "FOR UPDATE" in written[0]
    assert "INSERT INTO" in written[0]
    assert (event.sequence, event.prev_hash) == (before[0] + 1, before[1])
    # The hash PostgreSQL wrote is the one this process computes over the stored row, as verification does.
    with tenant_scope(tenant_a):
        stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.hash == event.hash == stored.compute_hash(stored.prev_hash)
    assert stored.extra == extra
    result = audit_chain_verify(chain=chain_of(tenant_a))
    assert result.ok, result
    # Committed: another connection reads it, and the head names it.
    from django.db import connections

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT set_config('enclave.tenant_id', %s, false)", [str(tenant_a.pk)])
            cursor.execute("SELECT hash FROM audit_auditevent WHERE id = %s", [event.pk])
            assert cursor.fetchone() == (event.hash,)
    finally:
        other.close()
    assert _head(tenant_a) == (event.sequence, event.hash)
    assert events_of(tenant_a, EventType.STUDIES_QUERIED)[-1].hash == event.hash


def test_a_failed_write_outside_a_transaction_leaves_nothing_and_the_scope_is_sent_again(
    tenant_a, tenant_b, radiologist_a, monkeypatch
):
    from psycopg.pq import TransactionStatus

    record(tenant_a, EventType.LOGOUT, actor_username="x")
    record(tenant_b, EventType.LOGOUT, actor_username="x")
    before = _head(tenant_a)
    count = len(events_of(tenant_a, EventType.STUDIES_QUERIED))
    values = audit_services._append_values

    def refused_values(row: AuditEvent) -> list[Any]:
        return ["not a uuid", *values(row)[1:]]  # the database refuses the event's public id

    monkeypatch.setattr(audit_services, "_append_values", refused_values)
    _head(tenant_b)  # the server holds tenant B's scope: tenant A's is sent with the statement that fails
    with pytest.raises(DatabaseError):
        record(tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist")
    assert _transaction_status() == TransactionStatus.IDLE  # rolled back, nothing left open
    # What the connection takes the server's scope to be is the server's (a setting sent with the failed statement
    # was undone with it, and is then sent again).
    assert connection.enclave_scope_sent is None
    assert _server_scope() == str(tenant_b.pk)
    monkeypatch.setattr(audit_services, "_append_values", values)
    assert _head(tenant_a) == before
    assert len(events_of(tenant_a, EventType.STUDIES_QUERIED)) == count
    # The connection goes on, each scope reading only its own rows.
    with tenant_scope(tenant_b):
        assert {e.tenant_id for e in AuditEvent.objects.all()} == {tenant_b.pk}
    written = record(tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist")
    assert _head(tenant_a) == (written.sequence, written.hash)
    assert written.prev_hash == before[1]


def test_the_first_event_of_a_chain_outside_a_transaction_makes_its_head():
    from audit.services import audit_event_record
    from tenants.scoping import platform_scope

    key = AuditChain.PLATFORM_KEY
    with platform_scope():
        assert not AuditChain.objects.filter(key=key).exists()  # a fresh database: the platform's chain has no head
    first = audit_event_record(event=EventType.LOGIN_FAILED, tenant=None, actor_username="x")
    second = audit_event_record(event=EventType.LOGIN_FAILED, tenant=None, actor_username="x")
    assert (first.sequence, second.sequence) == (1, 2)
    assert second.prev_hash == first.hash
    with platform_scope():
        head = AuditChain.objects.get(key=key)
    assert (head.last_sequence, head.last_hash) == (2, second.hash)


def test_a_statement_that_moves_no_head_fails_and_commits_nothing(tenant_a, radiologist_a, monkeypatch):
    """The lock, the INSERT and the head's UPDATE are one statement that fails when either wrote nothing, so the
    event is never committed without its head."""
    from psycopg.pq import TransactionStatus

    record(tenant_a, EventType.LOGOUT, actor_username="x")
    before = _head(tenant_a)
    text = audit_services._append_statement()
    elsewhere = text.replace(' WHERE "audit_auditchain"."id" = hashed."id"', ' WHERE "audit_auditchain"."id" = -1')
    assert elsewhere != text
    monkeypatch.setitem(audit_services._append_text, connection.alias, elsewhere)  # the UPDATE moves nothing
    with pytest.raises(DatabaseError):
        record(tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist")
    assert _transaction_status() == TransactionStatus.IDLE
    assert _head(tenant_a) == before
    assert not events_of(tenant_a, EventType.STUDIES_QUERIED)


def test_a_search_whose_query_event_cannot_be_written_answers_nothing(
    api_client_for, radiologist_a, tenant_a, north, monkeypatch
):
    client = api_client_for(radiologist_a, tenant_a)
    client.raise_request_exception = False
    append = audit_services._append_sent  # the one statement that appends an event to its chain

    def failing_append(row: AuditEvent, statement: str, params: list[Any]) -> Any:
        if row.event_type == EventType.STUDIES_QUERIED:
            raise DatabaseError("the audit store is down")
        return append(row, statement, params)

    monkeypatch.setattr(audit_services, "_append_sent", failing_append)
    refused = client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+json")
    assert refused.status_code == 500
    assert not events_of(tenant_a, EventType.STUDIES_QUERIED)
    monkeypatch.setattr(audit_services, "_append_sent", append)
    answered = client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+json")
    assert answered.status_code == 200
    patient_ids = {item["00100020"]["Value"][0] for item in answered.json()}
    assert patient_ids
    assert not any(pid.encode() in refused.content for pid in patient_ids)
    assert len(events_of(tenant_a, EventType.STUDIES_QUERIED)) == 1


def test_the_text_around_the_sequence_is_the_canonical_form_whatever_the_sequence(tenant_a):
    """`canonical_around_sequence` (what PostgreSQL hashes, with the sequence between) and `canonical` (what
    verification hashes) are the same bytes, with awkward values in every field that may hold them."""
    import datetime
    import uuid

    from audit.models import canonical_json

    participants = [{"type": "study", "id": "1.2", "name": 'Zoë "Ω"', "detail": {"b": 1, "a": [None]}}]
    for extra in ({}, {"z": "\u2028", "a": {"y": 1.5, "x": ["\u0000"]}}, {"sequence": 5, "participants": "x"}):
        row = AuditEvent(
            public_id=uuid.uuid4(), tenant=tenant_a, occurred_at=datetime.datetime.now(datetime.UTC),
            event_type=1, event_id="110112", event_type_code="", action="E", outcome=0,
            outcome_description="ça", actor_username="ü", actor_role="", system_principal="", source_address=None,
            target_type="", target_id="", participants=participants, request_id="r", extra=extra,
        )  # fmt: skip
        participants_json = canonical_json(participants)
        before, after = row.canonical_around_sequence(participants_json)
        assert (before + after).isascii()
        for sequence in (1, 9, 10, 12345678901234):
            row.sequence = sequence
            assert (before + str(sequence) + after).encode() == row.canonical() == row.canonical(participants_json)


def test_the_turn_of_a_month_is_within_the_edge_and_the_middle_is_not():
    from datetime import UTC, datetime, timedelta

    edge = audit_services.MONTH_EDGE
    turn = datetime(2027, 1, 1, tzinfo=UTC)
    assert audit_services._near_month_edge(turn)
    assert audit_services._near_month_edge(turn - edge + timedelta(seconds=1))
    assert audit_services._near_month_edge(turn + edge - timedelta(seconds=1))
    assert not audit_services._near_month_edge(turn - edge - timedelta(seconds=1))
    assert not audit_services._near_month_edge(turn + edge + timedelta(seconds=1))
    assert not audit_services._near_month_edge(datetime(2027, 1, 15, 12, tzinfo=UTC))


@pytest.mark.parametrize("minutes", [-2, 2])  # before and after the turn of a month
def test_near_the_turn_of_a_month_the_event_takes_its_time_under_the_lock(tenant_a, monkeypatch, minutes):
    """Near the turn of a month the one statement (its time taken before the lock) is not used: the event is written
    in an atomic block whose lock comes before its time, so two writers racing across the turn cannot leave a later
    sequence in the earlier month's WORM segment. It is recorded, hashed and verified as any other."""
    from datetime import UTC, datetime, timedelta

    from audit.selectors import audit_chain_verify
    from tests.chains import chain_of

    record(tenant_a, EventType.LOGOUT, actor_username="x")  # the chain's head exists
    at = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    monkeypatch.setattr(audit_services.timezone, "now", lambda: at)
    with CaptureQueriesContext(connection) as queries:
        event = record(tenant_a, EventType.LOGOUT, actor_username="y")
    written = [query["sql"] for query in queries.captured_queries]
    assert not any("sha256(" in sql for sql in written)  # not the one statement
    assert any("FOR UPDATE" in sql and "INSERT INTO" not in sql for sql in written)  # the lock on its own, first
    with tenant_scope(tenant_a):
        stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.occurred_at == at
    assert stored.hash == stored.compute_hash(stored.prev_hash)
    assert audit_chain_verify(chain=chain_of(tenant_a)).ok


def test_in_the_middle_of_a_month_the_event_is_the_one_statement(tenant_a, monkeypatch):
    from datetime import UTC, datetime

    record(tenant_a, EventType.LOGOUT, actor_username="x")
    monkeypatch.setattr(audit_services.timezone, "now", lambda: datetime(2027, 1, 15, 12, tzinfo=UTC))
    with CaptureQueriesContext(connection) as queries:
        record(tenant_a, EventType.LOGOUT, actor_username="y")
    written = [query["sql"] for query in queries.captured_queries]
    assert len(written) == 1
    assert "sha256(" in written[0]
