"""The audit events' table partitioned by month (PostgreSQL declarative partitioning, RANGE on occurred_at).

The existing table is renamed, a partitioned table of the same columns takes its name, a partition is made for
every month that holds events (and for this month and the next three), the rows are copied over, and the old table
is dropped. Then the constraints, indexes and the append-only trigger are made on the partitioned table: PostgreSQL
makes each on every partition, and on every partition made later.

PostgreSQL wants the partition key in every unique constraint, so the primary key is (id, occurred_at) and the
unique constraints on (chain, sequence) and public_id carry occurred_at too (the model says so; Django's pk stays
`id`, fed by one sequence). No foreign key can point at the table: SecurityAlert.event loses its database
constraint first.

`audit_auditevent_partition_ensure(month)` (made here) creates the partition of one month when missing and says
whether it did; the beat job `audit.tasks.audit_partitions_ensure` calls it for the months ahead. The default
partition catches events outside every partition (a clock far off): when it already holds events of a month, that
month's partition cannot be made (PostgreSQL refuses) and the function says so with a warning instead of failing.
"""

import uuid

import django.db.models.deletion
import django.db.models.functions.text
from django.db import migrations, models

MONTHS_AHEAD = 3

PARTITION_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_auditevent_partition_ensure(month date) RETURNS boolean AS $$
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
"""

FORWARD = [
    "ALTER TABLE audit_auditevent RENAME TO audit_auditevent_unpartitioned",
    "CREATE TABLE audit_auditevent (LIKE audit_auditevent_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    " PARTITION BY RANGE (occurred_at)",
    "CREATE TABLE audit_auditevent_default PARTITION OF audit_auditevent DEFAULT",
    PARTITION_FUNCTION,
    # A partition for every month with events, and for this month and the ones ahead.
    "SELECT audit_auditevent_partition_ensure(month::date) FROM generate_series("
    " date_trunc('month', LEAST(now(), (SELECT min(occurred_at) FROM audit_auditevent_unpartitioned))),"
    f" date_trunc('month', now()) + interval '{MONTHS_AHEAD} months', interval '1 month') AS month",
    "INSERT INTO audit_auditevent SELECT * FROM audit_auditevent_unpartitioned",
    "DROP TABLE audit_auditevent_unpartitioned",
    "CREATE SEQUENCE audit_auditevent_id_seq OWNED BY audit_auditevent.id",
    "SELECT setval('audit_auditevent_id_seq', COALESCE((SELECT max(id) FROM audit_auditevent), 0) + 1, false)",
    "ALTER TABLE audit_auditevent ALTER COLUMN id SET DEFAULT nextval('audit_auditevent_id_seq')",
    # Keys, with the partition key.
    "ALTER TABLE audit_auditevent ADD CONSTRAINT audit_auditevent_pkey PRIMARY KEY (id, occurred_at)",
    "ALTER TABLE audit_auditevent ADD CONSTRAINT audit_auditevent_chain_sequence_unique"
    " UNIQUE (chain_id, sequence, occurred_at)",
    "ALTER TABLE audit_auditevent ADD CONSTRAINT audit_auditevent_public_id_unique UNIQUE (public_id, occurred_at)",
    # Foreign keys from the events (allowed on a partitioned table), as Django made them.
    "ALTER TABLE audit_auditevent ADD CONSTRAINT audit_auditevent_actor_user_id_e6b6b356_fk_tenants_user_id"
    " FOREIGN KEY (actor_user_id) REFERENCES tenants_user(id) DEFERRABLE INITIALLY DEFERRED",
    "ALTER TABLE audit_auditevent ADD CONSTRAINT audit_auditevent_chain_id_ce5ff5d4_fk_audit_auditchain_id"
    " FOREIGN KEY (chain_id) REFERENCES audit_auditchain(id) DEFERRABLE INITIALLY DEFERRED",
    "ALTER TABLE audit_auditevent ADD CONSTRAINT audit_auditevent_tenant_id_570ea526_fk_tenants_tenant_id"
    " FOREIGN KEY (tenant_id) REFERENCES tenants_tenant(id) DEFERRABLE INITIALLY DEFERRED",
    # The indexes of the foreign keys, of the browser's filters and keyset order (audit.selectors), by name as before.
    "CREATE INDEX audit_auditevent_actor_user_id_e6b6b356 ON audit_auditevent (actor_user_id)",
    "CREATE INDEX audit_auditevent_chain_id_ce5ff5d4 ON audit_auditevent (chain_id)",
    "CREATE INDEX audit_auditevent_tenant_id_570ea526 ON audit_auditevent (tenant_id)",
    "CREATE INDEX audit_event_tenant_time ON audit_auditevent (tenant_id, occurred_at DESC)",
    "CREATE INDEX audit_event_tenant_type_time ON audit_auditevent (tenant_id, event_type, occurred_at DESC)",
    "CREATE INDEX audit_event_tenant_user_time ON audit_auditevent (tenant_id, actor_user_id, occurred_at DESC)",
    "CREATE INDEX audit_event_tenant_keyset ON audit_auditevent (tenant_id, occurred_at DESC, id DESC)",
    "CREATE INDEX audit_event_tenant_outcome ON audit_auditevent (tenant_id, outcome, occurred_at DESC)",
    "CREATE INDEX audit_event_tenant_address ON audit_auditevent (tenant_id, source_address, occurred_at DESC)",
    "CREATE INDEX audit_event_tenant_principal ON audit_auditevent (tenant_id, system_principal, occurred_at DESC)",
    "CREATE INDEX audit_event_tenant_username ON audit_auditevent"
    " (tenant_id, UPPER(actor_username), occurred_at DESC, id DESC)",
    "CREATE INDEX audit_event_participants_gin ON audit_auditevent USING gin (participants jsonb_path_ops)",
    # Append-only, on every partition (PostgreSQL clones a row trigger of a partitioned table onto each).
    "CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE OR DELETE ON audit_auditevent"
    " FOR EACH ROW EXECUTE FUNCTION audit_auditevent_refuse_change()",
    "ANALYZE audit_auditevent",
]


def forward(apps, schema_editor):
    for statement in FORWARD:
        schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0008_digests_and_forwarding")]

    operations = [
        # First: nothing may reference the table about to be partitioned.
        migrations.AlterField(
            model_name="securityalert",
            name="event",
            field=models.ForeignKey(
                db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name="+",
                to="audit.auditevent",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(model_name="auditevent", name="audit_auditevent_chain_sequence_unique"),
                migrations.AlterField(
                    model_name="auditevent",
                    name="public_id",
                    field=models.UUIDField(default=uuid.uuid4, editable=False),
                ),
                migrations.AddIndex(
                    model_name="auditevent",
                    index=models.Index(
                        models.F("tenant"), django.db.models.functions.text.Upper("actor_username"),
                        models.OrderBy(models.F("occurred_at"), descending=True),
                        models.OrderBy(models.F("id"), descending=True), name="audit_event_tenant_username",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="auditevent",
                    constraint=models.UniqueConstraint(
                        fields=("chain", "sequence", "occurred_at"), name="audit_auditevent_chain_sequence_unique"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="auditevent",
                    constraint=models.UniqueConstraint(
                        fields=("public_id", "occurred_at"), name="audit_auditevent_public_id_unique"
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(forward)],
        ),
    ]
