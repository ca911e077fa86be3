"""The database itself refuses to change or delete an audit event, whoever asks (SECURITY.md E5).

A PostgreSQL row trigger on UPDATE and DELETE (PostgreSQL is the only database Enclave runs on). TRUNCATE is left
alone: the test runner empties tables between transactional tests with it, and
only the table owner may run it.
"""

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION audit_auditevent_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP USING ERRCODE = '42501';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_auditevent_append_only
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_auditevent_refuse_change();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_auditevent_refuse_change();
"""

def forward(apps, schema_editor):
    schema_editor.execute(PG_FORWARD, params=None)


def backward(apps, schema_editor):
    schema_editor.execute(PG_BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_initial")]
    operations = [migrations.RunPython(forward, backward)]
