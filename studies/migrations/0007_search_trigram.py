"""Trigram indexes for the DICOM matcher's wildcard searches (studies.selectors.matching): `LIKE`/`ILIKE` with a
leading `*` cannot use a b-tree, and a sequential scan of every patient is what stalled the server (issue 8 #5).
EXPLAIN on a 100,000-row copy of the patient table (PostgreSQL 15): `name ILIKE '%A1B2%C3%'` goes from a Seq
Scan to a Bitmap Index Scan on the trigram index; a pattern with no three-character run (`*a*a*a*a*a*a*b`) still
scans, linearly (140 ms for 100,000 names), never backtracking. Created only where the pg_trgm extension is available (it is a trusted extension
from PostgreSQL 13, so the database owner may create it); without it the matcher is still correct, only slower,
and the statement timeout still bounds it."""

from django.db import migrations

FORWARD = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX IF NOT EXISTS studies_patient_name_trgm ON studies_patient USING gin (name gin_trgm_ops);
        CREATE INDEX IF NOT EXISTS studies_patient_id_trgm ON studies_patient USING gin (patient_id gin_trgm_ops);
        CREATE INDEX IF NOT EXISTS studies_study_referring_trgm
            ON studies_study USING gin (referring_physician gin_trgm_ops);
    END IF;
END
$$;
"""

BACKWARD = """
DROP INDEX IF EXISTS studies_patient_name_trgm;
DROP INDEX IF EXISTS studies_patient_id_trgm;
DROP INDEX IF EXISTS studies_study_referring_trgm;
"""


class Migration(migrations.Migration):
    dependencies = [("studies", "0006_instance_content_hash_internal_failure")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
