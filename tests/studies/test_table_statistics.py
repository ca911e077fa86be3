"""The tables a tenant's images fill are analyzed after 0.5 % of their rows change (studies migration 0020), and
why: a tenant missing from a table's statistics is planned as about one row, so a statement that names the tenant
and a series reads the tenant's own index and filters every one of its rows, until the table is analyzed again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from studies.models import Series
from studies.services.thumbnails import thumbnail_candidates
from tenants.scoping import tenant_scope
from tests.databases import database_url

pytestmark = pytest.mark.django_db(transaction=True)  # ANALYZE sees committed rows only

TABLES = ("studies_patient", "studies_study", "studies_series", "studies_instance", "studies_blob",
          "studies_ingestitem")  # fmt: skip
FILLED = ("studies_patient", "studies_study", "studies_series", "studies_blob", "studies_instance")


def _reloptions(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [table])
        (options,) = cursor.fetchone()
    return set(options or [])


def test_the_tables_a_tenant_fills_are_analyzed_after_half_a_percent_of_their_rows_change():
    for table in TABLES:
        assert {"autovacuum_analyze_scale_factor=0.005", "autovacuum_analyze_threshold=1000"} <= _reloptions(table)


def _as_owner(statements: list[str]) -> None:
    """Statements only the tables' owner may run (the suite connects as the application's role)."""
    with psycopg.connect(database_url(), autocommit=True) as owner:
        for statement in statements:
            owner.execute(statement)


@pytest.fixture
def no_autovacuum() -> Iterator[None]:
    """Autovacuum kept off these tables for the test, so that only the test's own ANALYZE changes their statistics."""
    _as_owner([f"ALTER TABLE {table} SET (autovacuum_enabled = false)" for table in FILLED])
    yield
    _as_owner([f"ALTER TABLE {table} RESET (autovacuum_enabled)" for table in FILLED])


def _fill(tenant: Any, tag: str, *, series: int, per_series: int) -> None:
    """One patient and study of `tenant` with `series` series of `per_series` instances each (rows only, no files),
    written by the database in one statement."""
    with tenant_scope(tenant), connection.cursor() as cursor:
        cursor.execute(
            """
            WITH p AS (
                INSERT INTO studies_patient (public_id, created_at, updated_at, tenant_id, issuer, name, sex,
                    patient_id)
                VALUES (gen_random_uuid(), now(), now(), %(t)s, '', 'PLAN^TEST', '', %(tag)s) RETURNING id
            ), s AS (
                INSERT INTO studies_study (public_id, created_at, updated_at, tenant_id, patient_id, number_of_series,
                    number_of_instances, referring_physician_key, study_instance_uid, accession_number, description,
                    referring_physician, modalities)
                SELECT gen_random_uuid(), now(), now(), %(t)s, p.id, %(n)s, %(n)s * %(per)s, '', '2.25.' || %(tag)s,
                    '', '', '', 'CT' FROM p RETURNING id
            ), se AS (
                INSERT INTO studies_series (public_id, created_at, updated_at, number_of_instances, tenant_id, study_id,
                    series_instance_uid, modality, description)
                SELECT gen_random_uuid(), now(), now(), %(per)s, %(t)s, s.id, '2.25.' || %(tag)s || '.' || g, 'CT', ''
                FROM s, generate_series(1, %(n)s) g RETURNING id
            ), b AS (
                INSERT INTO studies_blob (public_id, created_at, updated_at, wrapped_key, key_version, tenant_id, size,
                    kind, storage_name, sha256)
                SELECT gen_random_uuid(), now(), now(), '\\x00', 0, %(t)s, 1, 'instance', 'plan/' || gen_random_uuid(),
                    '' FROM generate_series(1, %(n)s * %(per)s) RETURNING id
            ), sn AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM se),
               bn AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM b)
            INSERT INTO studies_instance (public_id, created_at, updated_at, frames, size, blob_id, tenant_id,
                series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, sha256, content_sha256,
                instance_number, rows, columns)
            SELECT gen_random_uuid(), now(), now(), 1, 1, bn.id, %(t)s, sn.id, '2.25.' || %(tag)s || '.0.' || bn.k,
                '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', '', '', bn.k %% %(per)s + 1, 64, 64
            FROM bn JOIN sn ON sn.k = bn.k / %(per)s
            """,
            {"t": tenant.pk, "tag": tag, "n": series, "per": per_series},
        )


def _analyze() -> None:
    _as_owner([f"ANALYZE {table}" for table in FILLED])


def _instances_scan(plan: Any) -> dict[str, Any]:
    """The plan node that reads studies_instance."""
    if plan.get("Relation Name") == "studies_instance":
        return plan
    for child in plan.get("Plans", []):
        found = _instances_scan(child)
        if found:
            return found
    return {}


def _candidates_plan(tenant: Any) -> dict[str, Any]:
    import json

    with tenant_scope(tenant):
        series = Series.objects.order_by("-pk").first()
        (plan,) = json.loads(thumbnail_candidates(series).explain(format="json", analyze=True))
    return _instances_scan(plan["Plan"])


def test_a_tenant_missing_from_the_statistics_reads_all_its_rows_until_they_are_analyzed(
    no_autovacuum, tenant_a, tenant_b
):
    _fill(tenant_b, "1", series=500, per_series=6)
    _analyze()  # the statistics know tenant_b's 3,000 instances, and nothing of tenant_a
    _fill(tenant_a, "2", series=300, per_series=6)

    before = _candidates_plan(tenant_a)
    assert before["Index Name"].startswith("studies_instance_tenant_id")  # planned as about one row
    assert before["Rows Removed by Filter"] >= 1_700  # every other instance of the tenant read, for one series

    _analyze()  # what autovacuum now does after 0.5 % of a table's rows have changed
    after = _candidates_plan(tenant_a)
    assert after["Index Name"].startswith("studies_instance_series_id")
    assert after["Actual Rows"] == 6
