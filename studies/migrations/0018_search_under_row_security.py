"""Searches under row-level security (issue 10; docs/BENCHMARKS.md, "Searches under row-level security").

Under the tenant policy PostgreSQL uses a condition as an index condition only when its operator is LEAKPROOF:
`LIKE`, `ILIKE` and `upper(column)` are not, so a person-name search read every patient of the tenant. This adds
what the matcher (studies.selectors.matching) compares with leakproof operators instead:

- `studies_patient.name_folded`, `upper(name)` stored by PostgreSQL (no code writes it), indexed with the tenant in
  byte order (text_pattern_ops: `=`, `~>=~`, `~<~` are texteq, text_pattern_ge, text_pattern_lt, all leakproof);
- the same byte-order index on the patient ID, for `MRN12*`, and on the accession number (it replaces the
  collation-ordered one, which served `=` only);
- `enclave_prefix_end(prefix)`: the least string greater than every string that starts with `prefix`, in code
  point (= UTF-8 byte) order, so `col ~>=~ p AND col ~<~ enclave_prefix_end(p)` is exactly "starts with p". It is
  only ever applied to a constant (the folded search value), which the planner evaluates once (IMMUTABLE); NULL
  when there is none (a prefix made only of U+10FFFF).
"""

import django.db.models.functions.text
from django.db import migrations, models

PREFIX_END = r"""
CREATE OR REPLACE FUNCTION enclave_prefix_end(prefix text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    head text := prefix;
    code integer;
BEGIN
    WHILE head <> '' LOOP
        code := ascii(right(head, 1));
        IF code < 1114111 THEN
            code := code + 1;
            IF code BETWEEN 55296 AND 57343 THEN  -- surrogates are not characters: skip to U+E000
                code := 57344;
            END IF;
            RETURN left(head, -1) || chr(code);
        END IF;
        head := left(head, -1);  -- U+10FFFF has no successor: carry into the character before it
    END LOOP;
    RETURN NULL;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0017_tenantkey_key_files_removed_at"),
        ("tenants", "0015_tenant_exports_must_be_encrypted"),
    ]

    operations = [
        migrations.RunSQL(PREFIX_END, "DROP FUNCTION IF EXISTS enclave_prefix_end(text);"),
        migrations.AddField(
            model_name="patient",
            name="name_folded",
            field=models.GeneratedField(
                db_persist=True,
                expression=django.db.models.functions.text.Upper("name"),
                output_field=models.CharField(max_length=324),
            ),
        ),
        migrations.AddIndex(
            model_name="patient",
            index=models.Index(
                fields=["tenant", "name_folded"],
                name="studies_patient_name_folded",
                opclasses=["int8_ops", "text_pattern_ops"],
            ),
        ),
        migrations.AddIndex(
            model_name="patient",
            index=models.Index(
                fields=["tenant", "patient_id"],
                name="studies_patient_id_pattern",
                opclasses=["int8_ops", "text_pattern_ops"],
            ),
        ),
        migrations.RemoveIndex(model_name="study", name="studies_study_tenant_accession"),
        migrations.AddIndex(
            model_name="study",
            index=models.Index(
                fields=["tenant", "accession_number"],
                name="studies_study_tenant_accession",
                opclasses=["int8_ops", "text_pattern_ops"],
            ),
        ),
    ]
