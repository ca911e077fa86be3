"""Prepared statements of a connection (tenants/db/base.py `prepared_statements`): the statements every request
sends are PREPAREd once per connection and EXECUTEd afterwards, in the same round trip as before, with the tenant
scope still in front of them; what they read is what the unprepared statement reads, a revoked right or another
scope is seen at the very next execution, and a failure never leaves a connection unable to run the statement."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from tenants import access
from tenants.db.base import prepared_statements
from tenants.models import Role
from tenants.scoping import tenant_scope
from tenants.services import membership_change_role

MEMBERS = "SELECT user_id FROM tenants_membership WHERE user_id = ANY(%s) ORDER BY user_id"


def _sent(calls: list[str]) -> Any:
    """Record every string the driver is asked to run."""

    def wrapper(execute, sql, params, many, context):
        calls.append(sql)
        return execute(sql, params, many, context)

    return connection.execute_wrapper(wrapper)


def _prepared_on_server() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        return dict(cursor.fetchall())


def _run(sql: str, params: Any) -> list[tuple[Any, ...]]:
    with prepared_statements(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@pytest.mark.django_db
def test_prepared_once_then_executed_with_the_scope_in_front_and_logged_as_written(tenant_a, radiologist_a):
    sql = "SELECT count(*) FROM tenants_membership WHERE user_id = %s AND status = %s"
    calls: list[str] = []
    with tenant_scope(tenant_a), _sent(calls), CaptureQueriesContext(connection) as queries:
        connection.enclave_scope_sent = None  # the next statement carries the scope
        first = _run(sql, [radiologist_a.pk, "active"])
        second = _run(sql, [radiologist_a.pk, "active"])
        third = _run(sql, [radiologist_a.pk, "ended"])
    assert first == second == [(1,)]
    assert third == [(0,)]
    assert len(calls) == 3  # one round trip each, as unprepared
    assert calls[0].startswith(f"SELECT set_config('enclave.tenant_id', '{tenant_a.pk}', false); PREPARE enclave_")
    name = calls[0].split("PREPARE ", 1)[1].split(" ", 1)[0]
    assert f"; EXECUTE {name}(" in calls[0]
    assert calls[1].startswith(f"EXECUTE {name}(")
    assert calls[2].startswith(f"EXECUTE {name}(")
    assert "WHERE user_id = $1 AND status = $2" in _prepared_on_server()[name]
    # Query logs show the statement as it was written, with its values.
    assert [q["sql"] for q in queries.captured_queries] == [
        f"SELECT count(*) FROM tenants_membership WHERE user_id = {radiologist_a.pk} AND status = 'active'",
        f"SELECT count(*) FROM tenants_membership WHERE user_id = {radiologist_a.pk} AND status = 'active'",
        f"SELECT count(*) FROM tenants_membership WHERE user_id = {radiologist_a.pk} AND status = 'ended'",
    ]


@pytest.mark.django_db
def test_a_prepared_statement_reads_only_the_scope_it_runs_in_whatever_plan_it_keeps(
    tenant_a, tenant_b, radiologist_a, outsider_b
):
    people = [radiologist_a.pk, outsider_b.pk]
    for _ in range(8):  # past the five custom plans after which PostgreSQL may keep one generic plan
        with tenant_scope(tenant_a):
            assert _run(MEMBERS, [people]) == [(radiologist_a.pk,)]
        with tenant_scope(tenant_b):
            assert _run(MEMBERS, [people]) == [(outsider_b.pk,)]
    assert _run(MEMBERS, [people]) == []  # no scope: nothing passes (fail closed)


@pytest.mark.django_db
def test_a_changed_role_stops_the_next_decision_after_prepared_ones(tenant_a, admin_a, radiologist_a):
    with tenant_scope(tenant_a):
        for _ in range(8):  # the membership, the training gate and the permissions: prepared, then generic plans
            assert access.membership_current_get(user=radiologist_a, tenant=tenant_a).role == Role.RADIOLOGIST
            assert access.has_perm(radiologist_a, "tenants.view_studies", tenant_a)
        membership = access.membership_current_get(user=radiologist_a, tenant=tenant_a)
        membership_change_role(actor=admin_a, membership=membership, role=Role.REFERRING_PHYSICIAN)
        assert access.membership_current_get(user=radiologist_a, tenant=tenant_a).role == Role.REFERRING_PHYSICIAN
        assert not access.has_perm(radiologist_a, "tenants.view_studies", tenant_a)


@pytest.mark.django_db(transaction=True)
def test_a_failed_execute_keeps_the_statement_and_a_refused_prepare_takes_another_name(tenant_a):
    sql = "SELECT 10 / %s::int"
    assert _run(sql, [5]) == [(2,)]
    with pytest.raises(DatabaseError):
        _run(sql, [0])  # division by zero, in the EXECUTE
    assert _run(sql, [2]) == [(5,)]  # not prepared again: the statement was still there
    with pytest.raises(DatabaseError):
        _run("SELECT no_such_column FROM tenants_tenant WHERE id = %s", [1])  # refused at PREPARE
    with pytest.raises(DatabaseError):
        _run("SELECT no_such_column FROM tenants_tenant WHERE id = %s", [1])  # refused again, not "already exists"
    first_on_server = set(_prepared_on_server())
    with tenant_scope(tenant_a):
        assert _run("SELECT id FROM tenants_tenant WHERE id = %s", [tenant_a.pk]) == [(tenant_a.pk,)]
    assert len(set(_prepared_on_server()) - first_on_server) == 1


@pytest.mark.django_db(transaction=True)
def test_statements_the_server_session_lost_are_prepared_again(tenant_a):
    sql = "SELECT %s::int + 1"
    assert _run(sql, [1]) == [(2,)]
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what a pooler's DISCARD ALL does to the session
    assert _run(sql, [2]) == [(3,)]  # outside a transaction: prepared again at once
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    with pytest.raises(DatabaseError), transaction.atomic():
        _run(sql, [3])  # inside one, the transaction is lost with the statement: the error goes to the caller
    assert _run(sql, [4]) == [(5,)]  # and the next time it is prepared again


@pytest.mark.django_db
def test_statements_that_cannot_be_prepared_run_as_they_are(tenant_a):
    calls: list[str] = []
    with _sent(calls):
        assert _run("SELECT 1", None) == [(1,)]  # no parameters
        assert _run("SELECT 100 %% 7 + %s", [1]) == [(3,)]  # a percent sign of the statement's own
        assert _run("SELECT 100 %% 7 + %s", [1]) == [(3,)]
        assert _run("SELECT $$a$$ || %s", ["b"]) == [("ab",)]  # a dollar in the text: left alone
    calls = [re.sub(r"^SELECT set_config\('enclave.tenant_id', '[^']*', false\); ", "", sql) for sql in calls]
    assert calls[0] == "SELECT 1"
    assert calls[1].startswith("PREPARE enclave_")
    assert "SELECT 100 %% 7 + $1" in calls[1]
    assert calls[2].startswith("EXECUTE enclave_")
    assert calls[3] == "SELECT $$a$$ || %s"
