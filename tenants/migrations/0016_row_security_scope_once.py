"""The row-level-security policy reads the scope once per query (tenants.db.rowsecurity.CONDITION): every tenant
table's policy, and the function that makes the audit events' monthly partitions, are made again with it. The rows
each role sees do not change."""

import importlib

from django.db import migrations

from tenants.db import rowsecurity

_rls = importlib.import_module("tenants.migrations.0014_row_level_security")


def forward(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(rowsecurity.FUNCTIONS)
        for table in rowsecurity.tenant_tables(cursor):
            for statement in rowsecurity.table_protect_sql(table):
                cursor.execute(statement)
        cursor.execute(_rls.PARTITION_FUNCTION)


class Migration(migrations.Migration):
    dependencies = [("tenants", "0015_tenant_exports_must_be_encrypted")]

    # Backwards: the policies stay in this form (they select the same rows as the earlier one).
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
