"""A search whose conditions are index ranges with parameter bounds (a "starts with" name, a date range, a short
list) is prepared once per connection and run by PostgreSQL's generic plan, never planned again for its values
(studies.selectors.matching `_generic_plan_serves`); its answers are those of the queryset Django builds for every
value, and any other search keeps its plan made for its values. Through `dicom_search_values`, as QIDO-RS searches,
as the application's role under the tenant policy."""

from __future__ import annotations

from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies.selectors import matching
from studies.selectors.catalogue import STUDY
from studies.selectors.matching import dicom_search_values
from tenants.scoping import tenant_scope
from tests.studies.selectors.test_search_statements import FIELDS, _both, _ingest, _keys

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def archive(tenant_a, tenant_b) -> None:
    _ingest(tenant_a, 1, name="MARTIN^ANNE", day=date(2024, 1, 2))
    _ingest(tenant_a, 2, name="MARTINEZ^LUIS", day=date(2024, 2, 3), modality="MR")
    _ingest(tenant_a, 3, name="DOE^JANE", day=date(2024, 3, 4))
    _ingest(tenant_a, 6, name="MAR%TIN^_X", day=date(2023, 12, 31))  # LIKE's own characters, literally
    _ingest(tenant_b, 4, name="MARTIN^BOB", day=date(2024, 1, 2))
    matching._STATEMENTS.clear()


def _plans() -> dict[str, tuple[int, int]]:
    """This connection's prepared statements: text -> (generic plans, custom plans) so far."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        return {text: (generic, custom) for text, generic, custom in cursor.fetchall()}


def _statement(**keys: str) -> matching.CompiledStatement | None:
    return next(iter(s for k, s in matching._STATEMENTS.items() if k[3] == _shape(**keys)), None)


def _shape(**keys: str):
    return matching._shape(matching.keys_condition(_keys(**keys), level=STUDY), [])


NAMES = ["MARTIN*", "MARTINEZ*", "M*", "MAR?IN*", "mar%tin*", "MAR%TIN^_*", "D*", "Z*", "MARTIN^ANNE*"]
DATES = ["20240101-20240131", "20240101-20241231", "19000101-21001231", "20240102-20240102", "20240201-",
         "-20240131"]  # fmt: skip


def test_a_prefix_and_a_date_range_are_run_by_one_generic_plan(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        found = {value: _both(radiologist_a, STUDY, _keys(PatientName=value)) for value in NAMES}
        found |= {value: _both(radiologist_a, STUDY, _keys(ModalitiesInStudy="CT", StudyDate=value)) for value in DATES}
        name, month = _statement(PatientName="MARTIN*"), _statement(ModalitiesInStudy="CT", StudyDate="20240101-")
        assert name is not None
        assert name.generic
        assert not name.prepared
        assert month is not None
        assert month.generic
        plans = _plans()
    # One statement per shape, each run by its generic plan every time, never planned for its values.
    name_plans = [counts for text, counts in plans.items() if "name_folded" in text and "LIKE" in text]
    assert name_plans == [(len(NAMES), 0)]
    date_plans = [counts for text, counts in plans.items() if "study_date" in text and ">=" in text and "<=" in text]
    assert date_plans == [(len(DATES) - 2, 0)]  # the two open ranges are other shapes, other statements
    assert {row[1] for row in found["MARTIN*"]} == {"PID1", "PID2"}
    assert {row[1] for row in found["MAR%TIN^_*"]} == {"PID6"}  # % and _ matched as themselves
    assert found["mar%tin*"] == found["MAR%TIN^_*"]
    assert found["Z*"] == []
    assert {row[1] for row in found["20240101-20241231"]} == {"PID1", "PID3"}  # CT only, tenant a only
    assert {row[1] for row in found["19000101-21001231"]} == {"PID1", "PID3", "PID6"}


def test_the_generic_plan_is_asked_for_the_statement_only(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        for _ in range(2):
            dicom_search_values(actor=radiologist_a, level=STUDY, fields=FIELDS[STUDY], limit=10,
                                keys=_keys(PatientName="MARTIN*"))  # fmt: skip
        plans = _plans()
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('plan_cache_mode')")
            after = cursor.fetchone()[0]
    searched = [counts for text, counts in plans.items() if "name_folded" in text]
    assert searched == [(2, 0)]  # from the first execution on (auto would plan the first five for their values)
    assert after == "auto"  # set in the statement's own transaction (in front of it), not for the connection


def test_other_searches_keep_their_plans_for_their_values(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        for keys in ({"PatientName": "*ARTIN*"}, {"PatientID": "PID1"}, {"AccessionNumber": "*CC1"}):
            _both(radiologist_a, STUDY, _keys(**keys))
        no_start = _statement(PatientName="*ARTIN*")
        assert no_start is not None  # a LIKE alone: planned for its values, as before
        assert not no_start.generic
        assert not no_start.prepared
        fixed = _statement(PatientID="PID1")
        assert fixed is not None  # as before: prepared, plan_cache_mode auto
        assert fixed.prepared
        assert not fixed.generic
        with CaptureQueriesContext(connection) as queries:
            _both(radiologist_a, STUDY, _keys(PatientName="*ARTIN*"))
    assert not any("plan_cache_mode" in q["sql"] for q in queries.captured_queries)
