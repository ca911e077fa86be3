"""The tenant scope carried to the server (tenants/db/base.py): `enclave.tenant_id` is sent in front of the first
statement after the scope changes, in the same round trip, and the statement's own result is what the caller reads.
A statement that fails takes the setting with it, so the next one sends it again. Row-level security itself is
tests/security/test_row_security.py's."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from tenants.models import Membership
from tenants.scoping import tenant_scope


def _setting() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enclave.tenant_id', true)")
        return cursor.fetchone()[0]


def _sent(calls: list[str]):
    """Record every string the driver is asked to run (the set_config of a scope included)."""

    def wrapper(execute, sql, params, many, context):
        calls.append(sql)
        return execute(sql, params, many, context)

    return connection.execute_wrapper(wrapper)


@pytest.mark.django_db
def test_the_scope_rides_with_the_first_statement_and_its_result_is_the_statements(tenant_a, radiologist_a):
    assert _setting() == ""  # no scope on the server now
    calls: list[str] = []
    with tenant_scope(tenant_a), _sent(calls), CaptureQueriesContext(connection) as queries:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM tenants_membership WHERE user_id = %s", [radiologist_a.pk])
            assert cursor.fetchone() == (1,)
            cursor.execute(
                "UPDATE tenants_membership SET updated_at = updated_at WHERE user_id = %s", [radiologist_a.pk]
            )
            assert cursor.rowcount == 1
        assert _setting() == str(tenant_a.pk)
        assert Membership.objects.get(user=radiologist_a).tenant_id == tenant_a.pk  # through the ORM as well
    assert len(calls) == 4  # one round trip each: no set_config of its own
    assert calls[0].startswith(f"SELECT set_config('enclave.tenant_id', '{tenant_a.pk}', false); SELECT count(*)")
    assert not [c for c in calls[1:] if "set_config('enclave.tenant_id'" in c]
    assert len(queries) == 4
    # Without a scope: the setting is sent again, and no row passes.
    assert Membership._base_manager.filter(user=radiologist_a).count() == 0
    assert _setting() == ""


@pytest.mark.django_db(transaction=True)
def test_a_failed_statement_takes_the_setting_with_it_and_the_next_sends_it_again(tenant_a, radiologist_a):
    connection.ensure_connection()
    assert connection.get_autocommit()
    with tenant_scope(tenant_a):
        with pytest.raises(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
        assert connection.enclave_scope_sent is None
        assert Membership.objects.filter(user=radiologist_a).count() == 1
        assert _setting() == str(tenant_a.pk)
        with transaction.atomic():  # and inside a transaction, the rollback forgets it as before
            assert Membership.objects.filter(user=radiologist_a).count() == 1
    assert Membership._base_manager.filter(user=radiologist_a).count() == 0


@pytest.mark.django_db
def test_a_server_side_cursor_gets_its_scope_in_a_round_trip_of_its_own(tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        assert [m.tenant_id for m in Membership.objects.filter(user=radiologist_a).iterator(chunk_size=10)] == [
            tenant_a.pk
        ]
    with tenant_scope(tenant_a), transaction.atomic():
        connection.enclave_scope_sent = None
        assert [m.tenant_id for m in Membership.objects.filter(user=radiologist_a).iterator(chunk_size=10)] == [
            tenant_a.pk
        ]


@pytest.mark.django_db(transaction=True)
def test_a_statement_refused_in_a_transaction_block_gets_the_scope_as_a_statement_of_its_own(tenant_a):
    # VACUUM, CREATE DATABASE (pytest --create-db) and the like cannot share a string with the scope's setting: a
    # string of several statements is one implicit transaction. The setting goes first, alone, and still counts.
    connection.ensure_connection()
    connection.enclave_scope_sent = None  # unknown, as after a failed statement: it must be sent
    with tenant_scope(tenant_a), connection.cursor() as cursor:
        cursor.execute("VACUUM tenants_membership")  # the application's role does not own it: a warning, skipped
        assert _setting() == str(tenant_a.pk)
