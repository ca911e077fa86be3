"""The tables a tenant's images fill are analyzed after 0.5 % of their rows change (and 1,000), not PostgreSQL's 10 %.

A tenant that is not in a table's statistics (a new hospital group, migrating its archive into a large shared table)
is planned as about one row: the planner then reads the tenant's own index for any statement that names the tenant
and something more selective (the instances of one series, say), and walks all of the tenant's rows each time, until
autovacuum analyzes the table again, after 10 % of it has changed: the first tens of millions of a new tenant's rows
in a table of hundreds of millions. Seen in bench.small_cost (docs/BENCHMARKS.md, session 15): a thumbnail's
instances, 2,000 rows of the tenant filtered per statement; after an ANALYZE, the series' index. Storage parameters
only: no row is rewritten, and autovacuum reads them at its next round."""

from django.db import migrations

TABLES = (
    "studies_patient",
    "studies_study",
    "studies_series",
    "studies_instance",
    "studies_blob",
    "studies_ingestitem",
)
SCALE_FACTOR = 0.005
THRESHOLD = 1000


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0019_ingest_claim_index"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[
                f"ALTER TABLE {table} SET (autovacuum_analyze_scale_factor = {SCALE_FACTOR},"
                f" autovacuum_analyze_threshold = {THRESHOLD})"
                for table in TABLES
            ],
            reverse_sql=[
                f"ALTER TABLE {table} RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold)"
                for table in TABLES
            ],
        ),
    ]
