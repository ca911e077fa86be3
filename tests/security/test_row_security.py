"""Row-level security under the tenant scope (issue 14, SECURITY.md G2): the database's second wall.

Raw SQL through the application's own connection (the role the whole suite runs as, tests/conftest.py): without a
scope no row, in tenant A's scope no row of B, an insert of a B row in A's scope refused; the role can neither
switch the audit triggers off, nor become the owner, nor drop a policy; and every table with a tenant_id column
has row-level security enabled, forced, and its policy (so a new table without one fails here).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.utils import DatabaseError

from tenants.db import rowsecurity
from tenants.models import Membership
from tenants.scoping import platform_scope, tenant_scope
from tests.databases import superuser_connect_kwargs

pytestmark = pytest.mark.django_db


def _raw(sql: str, params: list | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _refused(sql: str, params: list | None = None) -> str:
    """Run `sql` in a savepoint that is rolled back; the database's refusal message (the test fails without one)."""
    try:
        with transaction.atomic():
            _raw(sql, params)
    except DatabaseError as exc:
        return str(exc)
    pytest.fail(f"the application's role was allowed: {sql}")


def test_the_application_connects_as_a_role_that_owns_nothing():
    user, superuser, bypass, createrole = _raw(
        "SELECT current_user, rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )[0]
    assert user == settings.DATABASES["default"]["USER"] != settings.DATABASE_OWNER["USER"]
    assert (superuser, bypass, createrole) == (False, False, False)
    owned = _raw(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
    )
    assert owned == [(0,)]
    assert _raw("SELECT pg_has_role(current_user, %s, 'MEMBER')", [settings.DATABASE_OWNER["USER"]]) == [(False,)]


def test_without_a_scope_no_row(tenant_a, radiologist_a, outsider_b):
    with platform_scope():
        assert _raw("SELECT count(*) FROM tenants_membership") == [(2,)]
    assert _raw("SELECT count(*) FROM tenants_membership") == [(0,)]
    assert _raw("SELECT count(*) FROM audit_auditevent") == [(0,)]
    assert _raw("SELECT count(*) FROM audit_auditchain") == [(0,)]


def test_a_tenants_scope_sees_its_rows_only(tenant_a, tenant_b, radiologist_a, outsider_b):
    with tenant_scope(tenant_a):
        rows = _raw("SELECT DISTINCT tenant_id FROM tenants_membership")
        events = _raw("SELECT DISTINCT tenant_id FROM audit_auditevent")
        by_id = _raw("SELECT count(*) FROM tenants_membership WHERE tenant_id = %s", [tenant_b.pk])
    assert rows == [(tenant_a.pk,)]
    assert events == [(tenant_a.pk,)]
    assert by_id == [(0,)]
    with tenant_scope(tenant_b):
        assert _raw("SELECT DISTINCT tenant_id FROM tenants_membership") == [(tenant_b.pk,)]


def test_writing_another_tenants_row_is_refused(tenant_a, tenant_b, radiologist_a, outsider_b):
    user_id = Membership.unscoped_objects.get(tenant=tenant_b).user_id
    with tenant_scope(tenant_a):
        refused = _refused(
            "INSERT INTO tenants_membership (tenant_id, public_id, created_at, updated_at, user_id, role, status,"
            " ended_reason) VALUES (%s, %s, now(), now(), %s, 'auditor', 'active', '')",
            [tenant_b.pk, str(uuid.uuid4()), user_id],
        )
        assert "row-level security" in refused
        # A's own row moved to B, and B's rows changed or deleted: nothing happens to B's rows.
        assert "row-level security" in _refused("UPDATE tenants_membership SET tenant_id = %s", [tenant_b.pk])
        with connection.cursor() as cursor:
            cursor.execute("UPDATE tenants_membership SET role = 'auditor' WHERE tenant_id = %s", [tenant_b.pk])
            assert cursor.rowcount == 0
            cursor.execute("DELETE FROM tenants_membership WHERE tenant_id = %s", [tenant_b.pk])
            assert cursor.rowcount == 0
    with tenant_scope(tenant_b):
        assert _raw("SELECT role FROM tenants_membership") == [("radiologist",)]


def test_a_forged_setting_is_no_tenant(tenant_a, radiologist_a):
    """Whatever the setting holds, only a tenant's id or 'platform' lets rows through."""
    for forged in ("", "1 OR true", "-1", "PLATFORM", " 1"):
        with transaction.atomic():
            _raw("SELECT set_config('enclave.tenant_id', %s, true)", [forged])
            assert _raw("SELECT count(*) FROM tenants_membership") == [(0,)], forged
        connection.enclave_scope_sent = None  # the savepoint's end undid the setting; send the scope again


def test_the_role_cannot_switch_the_audit_triggers_off(tenant_a):
    for sql in (
        "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only",
        "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
        "ALTER TABLE auditlog_logentry DISABLE TRIGGER USER",
        "ALTER TABLE audit_auditevent NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE tenants_membership DISABLE ROW LEVEL SECURITY",
        "DROP TRIGGER audit_auditevent_append_only ON audit_auditevent",
        "TRUNCATE audit_auditevent",
    ):
        assert "must be owner" in _refused(sql) or "permission denied" in _refused(sql), sql


def test_the_role_cannot_become_the_owner_nor_drop_a_policy(tenant_a):
    owner = settings.DATABASE_OWNER["USER"]
    assert "permission denied" in _refused(f'SET ROLE "{owner}"')
    assert "permission denied" in _refused(f'SET SESSION AUTHORIZATION "{owner}"')
    for table in ("tenants_membership", "studies_study", "audit_auditevent"):
        message = _refused(f"DROP POLICY {rowsecurity.POLICY} ON {table}")
        assert "must be owner" in message, message
        assert "must be owner" in _refused(f"ALTER POLICY {rowsecurity.POLICY} ON {table} USING (true)")
    assert "permission denied" in _refused(
        "CREATE OR REPLACE FUNCTION enclave_scope_is_platform() RETURNS boolean LANGUAGE sql AS $$ SELECT true $$"
    )


def test_the_audit_trigger_still_holds_under_the_role(tenant_a):
    with tenant_scope(tenant_a):
        assert "append-only" in _refused("UPDATE audit_auditevent SET outcome = 0")
        assert "append-only" in _refused("DELETE FROM audit_auditevent")


def _tables(conn: psycopg.Connection) -> dict[str, tuple[bool, bool, list[str]]]:
    rows = conn.execute(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
        " coalesce(array_agg(p.polname) FILTER (WHERE p.polname IS NOT NULL), '{}')"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()"
        " LEFT JOIN pg_policy p ON p.polrelid = c.oid"
        " WHERE c.relname IN (SELECT table_name FROM information_schema.columns"
        "   WHERE table_schema = current_schema() AND column_name = 'tenant_id')"
        " AND c.relkind IN ('r', 'p') GROUP BY 1, 2, 3"
    ).fetchall()
    return {name: (enabled, forced, list(policies)) for name, enabled, forced, policies in rows}


def test_every_table_with_a_tenant_column_has_its_policy():
    """Read as the superuser (the application's role may not see every table's policies): each table with a
    tenant_id column, partitions included, has row-level security enabled and forced and the scope's policy."""
    with psycopg.connect(**superuser_connect_kwargs()) as conn:
        tables = _tables(conn)
        condition = conn.execute(
            "SELECT DISTINCT pg_get_expr(polqual, polrelid) = pg_get_expr(polwithcheck, polrelid)"
            " FROM pg_policy WHERE polname = %s",
            [rowsecurity.POLICY],
        ).fetchall()
    assert len(tables) >= 40  # studies, audit, devices, training, tenants: the test reads the real schema
    missing = {name: state for name, state in tables.items() if state != (True, True, [rowsecurity.POLICY])}
    assert missing == {}
    assert condition == [(True,)]  # every policy checks written rows as it filters read ones


def test_every_policy_reads_the_scope_once_per_query(tenant_a, radiologist_a):
    """The policy's two functions are behind sub-selects, so a scan compares each row with parameters evaluated
    once (InitPlans), not with two function calls a row; every table's policy is that one expression."""
    with psycopg.connect(**superuser_connect_kwargs()) as conn:
        expressions = conn.execute(
            "SELECT DISTINCT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polname = %s", [rowsecurity.POLICY]
        ).fetchall()
    assert len(expressions) == 1
    assert "( SELECT enclave_scope_is_platform()" in expressions[0][0]
    assert "( SELECT enclave_scope_tenant()" in expressions[0][0]
    with tenant_scope(tenant_a):
        plan = "\n".join(row[0] for row in _raw("EXPLAIN SELECT count(*) FROM tenants_membership"))
        assert _raw("SELECT count(*) FROM tenants_membership") == [(1,)]
    assert "InitPlan" in plan
    filters = [line for line in plan.splitlines() if "Filter:" in line]
    assert filters
    assert not [line for line in filters if "enclave_scope" in line or "current_setting" in line]


@pytest.mark.django_db(transaction=True)
def test_a_new_audit_partition_gets_the_policy():
    """The beat job makes next months' partitions as the application's role (through the owner's function):
    each new partition is under the policy too."""
    month = "2099-01-01"
    with connection.cursor() as cursor:
        cursor.execute("SELECT audit_auditevent_partition_ensure(%s)", [month])
        assert cursor.fetchone() == (True,)
    try:
        with psycopg.connect(**superuser_connect_kwargs()) as conn:
            state = _tables(conn)["audit_auditevent_y2099m01"]
        assert state == (True, True, [rowsecurity.POLICY])
        assert _raw("SELECT count(*) FROM pg_class WHERE relname = 'audit_auditevent_y2099m01'"
                    " AND relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)") == [(0,)]  # fmt: skip
    finally:
        with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS audit_auditevent_y2099m01")


def test_a_query_that_forgets_the_orm_scope_still_sees_one_tenant(tenant_a, tenant_b, radiologist_a, outsider_b):
    """SECURITY.md G2's deliberately buggy code: the unfiltered base manager (no ORM scope filter) in A's scope
    reads only A's rows, and with no scope none."""
    with tenant_scope(tenant_a):
        assert {m.tenant_id for m in Membership._base_manager.all()} == {tenant_a.pk}
    assert Membership._base_manager.count() == 0


@pytest.mark.django_db(transaction=True)
def test_migrate_runs_as_the_owner_and_grants_the_application_role():
    """`manage.py migrate` borrows the owner's credentials and, after it, grants the application's role its rights
    (make run's fresh database): a right taken away is given back, and the connection is the role's again."""
    from django.core.management import call_command
    from psycopg import sql

    app = settings.DATABASES["default"]["USER"]
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE SELECT ON tenants_tenant FROM {}").format(sql.Identifier(app)))
    assert "permission denied" in _refused("SELECT count(*) FROM tenants_tenant")
    call_command("migrate", verbosity=0)
    assert len(_raw("SELECT count(*) FROM tenants_tenant")) == 1
    assert _raw("SELECT current_user") == [(app,)]
