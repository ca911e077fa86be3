"""An event written by a caller outside any transaction (a read's Query or Retrieve event) goes in a transaction of
its own driven by hand (tenants/db/base.py `short_transaction`): BEGIN rides with the lock of the chain's head and
COMMIT with the INSERT, two round trips instead of four. It is committed before the writer returns; a failed write
raises, leaves nothing and no open transaction, and the tenant scope is sent again before the next statement."""

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


def _transaction_status() -> int:
    return connection.connection.info.transaction_status


def test_an_event_outside_a_transaction_is_two_round_trips_and_committed(tenant_a, radiologist_a):
    from psycopg.pq import TransactionStatus

    record(tenant_a, EventType.LOGOUT, actor_username="x")  # the chain's head exists
    calls: list[str] = []
    with _sent(calls), CaptureQueriesContext(connection) as queries:
        event = record(tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist")
    assert connection.get_autocommit()
    assert not connection.in_atomic_block
    assert _transaction_status() == TransactionStatus.IDLE  # committed, nothing left open
    assert len(calls) == 2  # the two round trips: BEGIN with the head's lock, the INSERT with COMMIT
    assert calls[0].startswith("BEGIN; ")
    assert calls[1].endswith("; COMMIT")
    written = [query["sql"] for query in queries.captured_queries]
    assert len(written) == 2
    assert "audit_auditchain" in written[0]
    assert "FOR UPDATE" in written[0]
    assert written[1].startswith("WITH appended AS (INSERT INTO")
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
    append = audit_services._event_insert_and_advance

    def failing_append(row: AuditEvent, chain: Any, participants_json: Any = None) -> None:
        with connection.cursor() as cursor:  # the database refuses the event, inside the short transaction
            cursor.execute("SELECT 1 / 0")
        append(row, chain, participants_json)

    monkeypatch.setattr(audit_services, "_event_insert_and_advance", failing_append)
    with pytest.raises(DatabaseError):
        record(tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist")
    assert _transaction_status() == TransactionStatus.IDLE  # rolled back, nothing left open
    assert connection.enclave_scope_sent is None  # the rollback undid the scope's setting: sent again next time
    monkeypatch.setattr(audit_services, "_event_insert_and_advance", append)
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


def test_a_statement_that_stores_no_event_or_moves_no_head_fails_before_its_commit(tenant_a, radiologist_a):
    """The INSERT and the head's UPDATE are one statement that fails when either wrote nothing, so the COMMIT
    behind it never commits half of an append."""
    from psycopg.pq import TransactionStatus

    record(tenant_a, EventType.LOGOUT, actor_username="x")
    before = _head(tenant_a)
    lock = audit_services._chain_head_locked

    def elsewhere(key: str) -> Any:
        chain = lock(key)
        if chain is not None:
            chain.pk = -1  # a head that is not there: the UPDATE moves nothing
        return chain

    import unittest.mock

    with unittest.mock.patch.object(audit_services, "_chain_head_locked", elsewhere), pytest.raises(DatabaseError):
        record(tenant_a, EventType.STUDIES_QUERIED, actor=radiologist_a, actor_role="radiologist")
    assert _transaction_status() == TransactionStatus.IDLE
    assert _head(tenant_a) == before
    assert not events_of(tenant_a, EventType.STUDIES_QUERIED)


def test_a_search_whose_query_event_cannot_be_written_answers_nothing(
    api_client_for, radiologist_a, tenant_a, north, monkeypatch
):
    client = api_client_for(radiologist_a, tenant_a)
    client.raise_request_exception = False
    append = audit_services._event_insert_and_advance

    def failing_append(row: AuditEvent, chain: Any, participants_json: Any = None) -> None:
        if row.event_type == EventType.STUDIES_QUERIED:
            raise DatabaseError("the audit store is down")
        append(row, chain, participants_json)

    monkeypatch.setattr(audit_services, "_event_insert_and_advance", failing_append)
    refused = client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+json")
    assert refused.status_code == 500
    assert not events_of(tenant_a, EventType.STUDIES_QUERIED)
    monkeypatch.setattr(audit_services, "_event_insert_and_advance", append)
    answered = client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+json")
    assert answered.status_code == 200
    patient_ids = {item["00100020"]["Value"][0] for item in answered.json()}
    assert patient_ids
    assert not any(pid.encode() in refused.content for pid in patient_ids)
    assert len(events_of(tenant_a, EventType.STUDIES_QUERIED)) == 1
