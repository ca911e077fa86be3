"""The matcher's SQL under row-level security: its indexed conditions use leakproof operators only (else the tenant
policy turns every search into a read of the whole tenant), and the index-friendly shape (a folded column, a
byte-order range beside the LIKE) finds exactly what the LIKE alone found.

Each case runs through `search_queryset`, as QIDO-RS, C-FIND and the study list do, as the application's role with
the tenant policy in force (the suite's connection)."""

from __future__ import annotations

import json
import re
from itertools import count
from typing import Any

import pytest
from django.db import connection

from studies.models import Patient, Study
from studies.selectors.catalogue import BY_KEYWORD, PATIENT, STUDY
from studies.selectors.matching import Key, literal_start, search_queryset
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db

_uids = count(1)


def _session_settings() -> tuple[str, str, str]:
    """The session's join and timeout settings, as the next statement of this connection sees them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin'), "
            "current_setting('statement_timeout')"
        )
        return cursor.fetchone()


def _patient(tenant: Any, name: str, patient_id: str | None = None) -> Patient:
    patient = Patient.objects.create(tenant=tenant, patient_id=patient_id or f"P{next(_uids)}", name=name)
    Study.objects.create(tenant=tenant, patient=patient, study_instance_uid=f"1.2.3.{next(_uids)}")
    return patient


def _found(actor: Any, keyword: str, value: str, *, level: Any = STUDY) -> set[str]:
    rows = search_queryset(actor=actor, level=level, keys=[Key(BY_KEYWORD[keyword.lower()], value)])
    return {(row if level is PATIENT else row.patient).name for row in rows}


# The same matches as before the index-friendly shape: boundaries of "starts with"
# ------------------------------------------------------------------------------

NAMES = [
    "MARTIN^ANNE",
    "martinez^bob",
    "MARTIO^CARL",  # just past the prefix MARTIN (N + 1 = O)
    "MARTI^DORA",  # shorter than the prefix
    "MARTIM^EVE",  # just before it
    "A%B^FAY",
    "AXB^GUS",
    "A_C^HAL",
    "DOE^JOHN",
    "DOE^JANE",
    "DOEJOHN",
    "ÉMILE^IRIS",
    "émilie^jan",
    "Z\U0010ffff^KIM",
    "Z\U0010ffffQ^LEO",
    "[^MAX",  # "Z" + 1: the first name past Z\U0010ffff...
    "\U0010ffff^NED",
    "",
]


@pytest.mark.django_db(transaction=True)
def test_a_search_outside_a_transaction_sends_its_settings_with_it_in_one_round_trip(tenant_a, radiologist_a):
    """Outside a transaction (a QIDO-RS request): no BEGIN, settings statement and COMMIT of its own; the settings
    hold for the search's statement and are gone after it."""
    from django.db.models.expressions import RawSQL
    from django.test.utils import CaptureQueriesContext

    from studies.selectors.matching import search_rows

    with tenant_scope(tenant_a):
        patient = _patient(tenant_a, "MARTIN^ANNE")
        before = _session_settings()
        qs = Study.objects.filter(patient=patient).annotate(
            joins=RawSQL("current_setting('enable_hashjoin') || current_setting('enable_mergejoin')", []),
            timeout=RawSQL("current_setting('statement_timeout')", []),
        )
        assert connection.get_autocommit()
        assert not connection.in_atomic_block
        with CaptureQueriesContext(connection) as queries:
            during = search_rows(qs, limit=10, index_joins=True)
        plain = search_rows(qs, limit=10)

        assert len(queries) == 1  # the search's statement alone
        assert [(row.joins, row.timeout) for row in during] == [("offoff", "5s")]
        assert [row.joins for row in plain] == ["onon"]
        assert [row.patient_id for row in during] == [patient.pk]
        assert _session_settings() == before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("MARTIN*", {"MARTIN^ANNE", "martinez^bob"}),
        ("martin*", {"MARTIN^ANNE", "martinez^bob"}),  # person names ignore case
        ("MAR?IN*", {"MARTIN^ANNE", "martinez^bob"}),
        ("MARTIN^ANNE", {"MARTIN^ANNE"}),
        ("martin^anne", {"MARTIN^ANNE"}),
        ("MARTIN", set()),  # no wildcard: the whole value
        ("*ARTI*", {"MARTIN^ANNE", "martinez^bob", "MARTIO^CARL", "MARTI^DORA", "MARTIM^EVE"}),  # infix
        ("A%B*", {"A%B^FAY"}),  # % and _ are literal, in the range and in the LIKE
        ("A_C*", {"A_C^HAL"}),
        ("A?B*", {"A%B^FAY", "AXB^GUS"}),
        ("DOE^J*", {"DOE^JOHN", "DOE^JANE"}),  # the component separator is a character like any other
        ("DOE^*", {"DOE^JOHN", "DOE^JANE"}),
        ("DOE*", {"DOE^JOHN", "DOE^JANE", "DOEJOHN"}),
        ("émil*", {"ÉMILE^IRIS", "émilie^jan"}),  # non-ASCII: folded by the database on both sides
        ("ÉMILE^*", {"ÉMILE^IRIS"}),
        ("Z\U0010ffff*", {"Z\U0010ffff^KIM", "Z\U0010ffffQ^LEO"}),  # the last character: the end carries
        ("Z*", {"Z\U0010ffff^KIM", "Z\U0010ffffQ^LEO"}),
        ("\U0010ffff*", {"\U0010ffff^NED"}),  # nothing is past it: the low end alone
        ("*", set(NAMES)),  # universal matching: every patient, the empty name too
    ],
)
def test_person_name_matching(tenant_a, radiologist_a, value, expected):
    with tenant_scope(tenant_a):
        for name in NAMES:
            _patient(tenant_a, name)

        # (only these names: a transactional test run before this one may leave its tenant's rows behind)
        assert _found(radiologist_a, "PatientName", value) & set(NAMES) == expected
        assert _found(radiologist_a, "PatientName", value, level=PATIENT) & set(NAMES) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("MRN12*", {"MRN12", "MRN123"}),
        ("mrn12*", {"mrn12x"}),  # IDs are case-sensitive
        ("MRN1?3", {"MRN123"}),
        ("MRN1%*", {"MRN1%5"}),
        ("MRN12", {"MRN12"}),
    ],
)
def test_patient_id_prefix_matching(tenant_a, radiologist_a, value, expected):
    with tenant_scope(tenant_a):
        for patient_id in ("MRN12", "MRN123", "MRN13", "mrn12x", "MRN1%5", "MRN1X5"):
            _patient(tenant_a, patient_id, patient_id=patient_id)

        rows = search_queryset(actor=radiologist_a, level=STUDY, keys=[Key(BY_KEYWORD["patientid"], value)])

        assert {row.patient.patient_id for row in rows} == expected


def test_the_folded_name_is_kept_by_the_database(tenant_a):
    with tenant_scope(tenant_a):
        patient = _patient(tenant_a, "doe^jane")
        Patient.objects.filter(pk=patient.pk).update(name="Roe^Émile")

        assert Patient.objects.get(pk=patient.pk).name_folded == "ROE^ÉMILE"


def test_another_tenants_patients_are_not_matched(tenant_a, tenant_b, radiologist_a):
    with tenant_scope(tenant_b):
        _patient(tenant_b, "MARTIN^SOUTH")
    with tenant_scope(tenant_a):
        _patient(tenant_a, "MARTIN^NORTH")

        assert _found(radiologist_a, "PatientName", "MARTIN*") == {"MARTIN^NORTH"}
        assert _found(radiologist_a, "PatientName", "martin^south") == set()


@pytest.mark.parametrize(
    ("value", "start"),
    [("MARTIN*", "MARTIN"), ("MAR?IN*", "MAR"), ("*ARTIN", ""), ("A%B*", "A%B"), ("ABC", "ABC")],
)
def test_literal_start(value, start):
    assert literal_start(value) == start


# Leakproof: what the index can use under the policy
# ------------------------------------------------------------------------------

# (keyword, value, the column the key is matched on, the operators an index on it serves for this value)
INDEXED = [
    ("PatientName", "MARTIN^ANNE", "studies_patient.name_folded", {"="}),
    ("PatientName", "MARTIN*", "studies_patient.name_folded", {"~>=~", "~<~"}),
    ("PatientName", "MAR?IN*", "studies_patient.name_folded", {"~>=~", "~<~"}),
    ("PatientID", "MRN12", "studies_patient.patient_id", {"="}),
    ("PatientID", "MRN12*", "studies_patient.patient_id", {"~>=~", "~<~"}),
    ("AccessionNumber", "A12*", "studies_study.accession_number", {"~>=~", "~<~"}),
    ("StudyDate", "20230101-20231231", "studies_study.study_date", {">=", "<="}),
    ("AccessionNumber", "A123", "studies_study.accession_number", {"="}),
    ("StudyInstanceUID", "1.2.3\\1.2.4", "studies_study.study_instance_uid", {"="}),
]
_CONDITION = re.compile(r'"(\w+)"\."(\w+)" (=|~>=~|~<~|>=|<=|<|>|LIKE|ILIKE|IN) ')
_SQL_OPERATOR = {"LIKE": "~~", "ILIKE": "~~*", "IN": "="}  # IN (...) is = ANY (...)
_TYPE = {"character varying": "text", "text": "text", "date": "date", "bigint": "bigint", "integer": "integer"}


def _operators_on(sql: str, column: str) -> set[str]:
    return {
        _SQL_OPERATOR.get(operator, operator)
        for table, name, operator in _CONDITION.findall(sql)
        if f"{table}.{name}" == column
    }


def _leakproof(operator: str, column: str) -> bool:
    table, name = column.split(".")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = %s AND column_name = %s", [table, name]
        )
        kind = _TYPE[cursor.fetchone()[0]]
        cursor.execute(
            "SELECT p.proleakproof FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode "
            "WHERE o.oprname = %s AND o.oprleft = %s::regtype AND o.oprright = %s::regtype",
            [operator, kind, kind],
        )
        return cursor.fetchone() == (True,)


@pytest.mark.parametrize(("keyword", "value", "column", "indexed"), INDEXED, ids=[f"{k}={v}" for k, v, *_ in INDEXED])
def test_a_key_is_matched_with_leakproof_operators_an_index_serves(
    tenant_a, radiologist_a, keyword, value, column, indexed
):
    """Fails when a key's condition on its column loses its leakproof operators, or its column is wrapped in a
    function: PostgreSQL then applies the tenant policy first and no index serves the key. LIKE stays beside the
    range as the exact check (it is not leakproof: it only filters the candidates the range found)."""
    with tenant_scope(tenant_a):
        qs = search_queryset(actor=radiologist_a, level=STUDY, keys=[Key(BY_KEYWORD[keyword.lower()], value)])
        sql = str(qs.query)

        used = _operators_on(sql, column)
        leakproof = {operator for operator in used if _leakproof(operator, column)}

    assert indexed <= leakproof, (used, sql)
    assert used - leakproof <= {"~~"}, (used, sql)
    table, name = column.split(".")
    assert f'("{table}"."{name}")' not in sql  # no function of the column


# The operators the matcher puts on the indexed side, and what the catalogue says of them.
LEAKPROOF_OPERATORS = [
    ("=", "text", "text"),  # exact text, the folded name, UIDs (IN is = ANY)
    ("~>=~", "text", "text"),  # the low end of "starts with"
    ("~<~", "text", "text"),  # its high end
    (">=", "date", "date"),
    ("<=", "date", "date"),
    ("=", "date", "date"),
    ("=", "bigint", "bigint"),  # the tenant, every key beside it
]


@pytest.mark.parametrize(("operator", "left", "right"), LEAKPROOF_OPERATORS)
def test_the_indexed_operators_are_leakproof(operator, left, right):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.proleakproof FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode "
            "WHERE o.oprname = %s AND o.oprleft = %s::regtype AND o.oprright = %s::regtype",
            [operator, left, right],
        )
        assert cursor.fetchall() == [(True,)]


def test_like_ilike_and_upper_are_not_leakproof():
    """Why the shape above exists: these stay in the query as the exact check, never as what an index serves."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT proname, proleakproof FROM pg_proc "
            "WHERE proname IN ('textlike', 'texticlike', 'upper') AND proargtypes[0] = 'text'::regtype"
        )
        found = dict(cursor.fetchall())
    assert found == {"textlike": False, "texticlike": False, "upper": False}


def test_the_sql_folds_only_constants(tenant_a, radiologist_a):
    """upper() and enclave_prefix_end() apply to the search value, never to a column (a function on a column
    would not be leakproof, and no index would serve it)."""
    with tenant_scope(tenant_a):
        qs = search_queryset(actor=radiologist_a, level=STUDY, keys=[Key(BY_KEYWORD["patientname"], "MAR?IN*")])
        sql, _ = qs.query.sql_with_params()

    assert not re.search(r"UPPER\(\"", sql)
    assert "UPPER(%s)" in sql
    assert "enclave_prefix_end(UPPER(%s))" in sql


def test_the_folded_name_never_reaches_the_change_log(tenant_a):
    """django-auditlog masks the name; the folded copy of it is not logged at all."""
    from auditlog.models import LogEntry

    with tenant_scope(tenant_a):
        patient = _patient(tenant_a, "doe^jane")
        patient.name = "Roe^Jane"
        patient.save(update_fields=["name", "updated_at"])

        entries = LogEntry.objects.get_for_object(patient)
        changed = [entry.changes_dict for entry in entries]

    assert len(changed) == 2
    assert all("name_folded" not in fields for fields in changed)
    assert all("ROE" not in json.dumps(fields) and "DOE" not in json.dumps(fields) for fields in changed)


def test_a_search_below_the_patient_level_joins_by_lookups_and_gives_the_settings_back(tenant_a, radiologist_a):
    """Inside the caller's transaction: the join settings and the timeout hold for the search only."""
    from django.db.models.expressions import RawSQL

    from studies.selectors.matching import search_rows

    with tenant_scope(tenant_a):
        patient = _patient(tenant_a, "MARTIN^ANNE")
        before = _session_settings()
        qs = Study.objects.filter(patient=patient).annotate(
            joins=RawSQL("current_setting('enable_hashjoin') || current_setting('enable_mergejoin')", [])
        )

        during = search_rows(qs, limit=10, index_joins=True)
        plain = search_rows(qs, limit=10)

        assert [row.joins for row in during] == ["offoff"]
        assert [row.joins for row in plain] == ["onon"]
        assert _session_settings() == before


@pytest.mark.parametrize(
    ("value", "expected"),
    [("roe*", {"ROE^JANE", "roe^jim"}), ("ROE^JANE", {"ROE^JANE"}), ("*^j?m", {"roe^jim"}), ("ROE", set())],
)
def test_a_person_name_without_a_folded_column_matches_the_same_way(tenant_a, radiologist_a, value, expected):
    """ReferringPhysicianName has no folded column: upper() on both sides all the same (read in the tenant)."""
    with tenant_scope(tenant_a):
        for referrer in ("ROE^JANE", "roe^jim", "DOE^JOHN"):
            patient = Patient.objects.create(tenant=tenant_a, patient_id=f"P{next(_uids)}", name="X")
            uid = f"1.2.3.{next(_uids)}"
            Study.objects.create(tenant=tenant_a, patient=patient, study_instance_uid=uid, referring_physician=referrer)
        key = Key(BY_KEYWORD["referringphysicianname"], value)

        found = {row.referring_physician for row in search_queryset(actor=radiologist_a, level=STUDY, keys=[key])}

    assert found & {"ROE^JANE", "roe^jim", "DOE^JOHN"} == expected  # (rows a transactional test left aside)
