"""Row-level security on every tenant-owned table (issue 14): the SQL, the roles' grants, and the checks.

Every table with a `tenant_id` column has row-level security enabled and forced (the owner is held by it too)
and one policy, `enclave_tenant_scope`, for every command and every role: a row is seen, inserted, changed or
deleted only when its tenant is the connection's `enclave.tenant_id` (set by the tenant scope, tenants.db.base),
or when that setting is "platform" (tenants.scoping.platform_scope). With the setting empty or missing, no row
(fail closed). Rows of no tenant (the platform audit chain's) are seen by platform work only.

Two database roles: the owner (DATABASE_URL), which owns the tables and runs the migrations, the backups and the
restore drill; and the application's role (DATABASE_APP_URL), which owns nothing, is granted only SELECT,
INSERT, UPDATE and DELETE on the tables (no TRUNCATE, no REFERENCES, no TRIGGER) and the use of the sequences,
and so can neither change a table (ALTER TABLE ... DISABLE TRIGGER), nor drop a policy, nor become the owner.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

POLICY = "enclave_tenant_scope"

# The scope as the policies read it. A malformed setting is no tenant.
FUNCTIONS = """
CREATE OR REPLACE FUNCTION enclave_scope_tenant() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN current_setting('enclave.tenant_id', true) ~ '^[0-9]{1,18}$'
                THEN current_setting('enclave.tenant_id', true)::bigint END
$$;
CREATE OR REPLACE FUNCTION enclave_scope_is_platform() RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(current_setting('enclave.tenant_id', true) = 'platform', false)
$$;
"""
FUNCTIONS_DROP = """
DROP FUNCTION IF EXISTS enclave_scope_tenant();
DROP FUNCTION IF EXISTS enclave_scope_is_platform();
"""
# Each function behind a sub-select, so PostgreSQL evaluates it once per query (an InitPlan) and compares every row
# with a parameter: written inline, both functions ran (and parsed the setting) on every row a scan read, about
# 2.5 us a row; a sequential scan of 300,000 rows went from 175 to 38 ms (tenants migration 0016). The same rows.
CONDITION = "((SELECT enclave_scope_is_platform()) OR tenant_id = (SELECT enclave_scope_tenant()))"

# Every table (and partition) of the current schema with a tenant_id column.
TENANT_TABLES = """
SELECT c.table_name FROM information_schema.columns c
JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = current_schema() AND c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name
"""


def table_protect_sql(table: str) -> list[sql.Composed]:
    """The statements that put `table` (with a tenant_id column) under the policy; idempotent."""
    name = sql.Identifier(table)
    policy = sql.Identifier(POLICY)
    return [
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(name),
        sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(name),
        sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(policy, name),
        sql.SQL("CREATE POLICY {} ON {} USING {cond} WITH CHECK {cond}").format(policy, name, cond=sql.SQL(CONDITION)),
    ]


def table_unprotect_sql(table: str) -> list[sql.Composed]:
    name = sql.Identifier(table)
    return [
        sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(POLICY), name),
        sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(name),
        sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(name),
    ]


def tenant_tables(cursor: Any) -> list[str]:
    cursor.execute(TENANT_TABLES)
    return [row[0] for row in cursor.fetchall()]


def app_role_grant_sql(role: str, schema: str) -> list[sql.Composed]:
    """What the application's role may do: read and write rows, use the sequences; nothing else."""
    r, s = sql.Identifier(role), sql.Identifier(schema)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(s, r),
    ]


def app_role_create_sql(role: str, password: str | None) -> sql.Composed:
    """The application's role, made by a superuser (or a role with CREATEROLE): it may log in, nothing more."""
    stmt = sql.SQL(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
    ).format(sql.Identifier(role))
    if password:
        stmt = sql.SQL("{} PASSWORD {}").format(stmt, sql.Literal(password))
    return stmt
