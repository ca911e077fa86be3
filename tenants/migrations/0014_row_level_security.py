"""Row-level security on every tenant-owned table (issue 14; tenants/db/rowsecurity.py says how it works).

Every table of the schema with a tenant_id column at this point gets row-level security, enabled and forced, and
the policy `enclave_tenant_scope`. A table added later needs the same in its own migration (a RunPython that
executes `tenants.db.rowsecurity.table_protect_sql(table)`): tests/security/test_row_security.py fails for any
tenant table without it.

The audit events' monthly partitions are made at run time by the application's role, which owns nothing: the
function that makes them now runs as its owner (SECURITY DEFINER, with a fixed search_path) and puts each new
partition under the same policy.
"""

from django.db import migrations

from tenants.db import rowsecurity

PARTITION_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_auditevent_partition_ensure(month date) RETURNS boolean
SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    next_day date := (date_trunc('month', month) + interval '1 month')::date;
    part text := 'audit_auditevent_' || to_char(date_trunc('month', month), '"y"YYYY"m"MM');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF audit_auditevent FOR VALUES FROM (%L) TO (%L)',
        part, to_char(first_day, 'YYYY-MM-DD') || ' 00:00:00+00', to_char(next_day, 'YYYY-MM-DD') || ' 00:00:00+00'
    );
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', part);
    EXECUTE format('CREATE POLICY enclave_tenant_scope ON %I USING CONDITION WITH CHECK CONDITION', part);
    RETURN true;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'audit events of % are in the default partition: its partition is not made', part;
    RETURN false;
END
$$ LANGUAGE plpgsql;
REVOKE ALL ON FUNCTION audit_auditevent_partition_ensure(date) FROM PUBLIC;
""".replace("CONDITION", rowsecurity.CONDITION)

PARTITION_FUNCTION_BEFORE = """
CREATE OR REPLACE FUNCTION audit_auditevent_partition_ensure(month date) RETURNS boolean
SECURITY INVOKER AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    next_day date := (date_trunc('month', month) + interval '1 month')::date;
    part text := 'audit_auditevent_' || to_char(date_trunc('month', month), '"y"YYYY"m"MM');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF audit_auditevent FOR VALUES FROM (%L) TO (%L)',
        part, to_char(first_day, 'YYYY-MM-DD') || ' 00:00:00+00', to_char(next_day, 'YYYY-MM-DD') || ' 00:00:00+00'
    );
    RETURN true;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'audit events of % are in the default partition: its partition is not made', part;
    RETURN false;
END
$$ LANGUAGE plpgsql;
GRANT EXECUTE ON FUNCTION audit_auditevent_partition_ensure(date) TO PUBLIC;
"""


def forward(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(rowsecurity.FUNCTIONS)
        for table in rowsecurity.tenant_tables(cursor):
            for statement in rowsecurity.table_protect_sql(table):
                cursor.execute(statement)
        cursor.execute(PARTITION_FUNCTION)


def backward(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(PARTITION_FUNCTION_BEFORE)
        for table in rowsecurity.tenant_tables(cursor):
            for statement in rowsecurity.table_unprotect_sql(table):
                cursor.execute(statement)
        cursor.execute(rowsecurity.FUNCTIONS_DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0013_recertification"),
        ("audit", "0012_worm_copies"),
        ("studies", "0017_tenantkey_key_files_removed_at"),
        ("devices", "0004_device_certificate_sha256"),
        ("training", "0004_operatorcompletion"),
    ]
    operations = [migrations.RunPython(forward, backward, elidable=False)]
