"""The search's statement compiled once per shape (studies.selectors.matching `_search_values_compiled`): the same
rows as the queryset Django builds for every shape, one compilation per shape, and no statement shared where it
would be wrong (another tenant, another shape, a caller who may not see every study). Through
`dicom_search_values`, as QIDO-RS searches, as the application's role under the tenant policy."""

from __future__ import annotations

import uuid
from datetime import date
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from studies.selectors import matching
from studies.selectors.catalogue import BY_KEYWORD, INSTANCE, SERIES, STUDY
from studies.selectors.matching import Key, dicom_search_values, search_queryset, search_rows
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import referrer_make

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = {
    STUDY: ["study_instance_uid", "patient__patient_id", "patient__name", "study_date", "accession_number", "pk"],
    SERIES: ["series_instance_uid", "modality", "study__study_instance_uid", "study__patient__patient_id", "pk"],
    INSTANCE: ["sop_instance_uid", "series__series_instance_uid", "series__study__study_instance_uid", "pk"],
}


def _ingest(tenant: Tenant, n: int, *, name: str, day: date, modality: str = "CT", referring: str = "ROE^RICHARD"):
    data = make_instance(
        patient_id=f"PID{n}", patient_name=name, study_uid=f"1.2.3.{n}", series_uid=f"1.2.3.{n}.1",
        sop_uid=f"1.2.3.{n}.1.1", modality=modality, study_date=day, accession=f"ACC{n}", referring=referring,
    )  # fmt: skip
    with tenant_scope(tenant):
        services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)


@pytest.fixture
def archive(tenant_a: Tenant, tenant_b: Tenant) -> None:
    _ingest(tenant_a, 1, name="MARTIN^ANNE", day=date(2024, 1, 2))
    _ingest(tenant_a, 2, name="MARTINEZ^LUIS", day=date(2024, 2, 3), modality="MR")
    _ingest(tenant_a, 3, name="DOE^JANE", day=date(2024, 3, 4), referring="DOE^JOHN")
    _ingest(tenant_b, 4, name="MARTIN^BOB", day=date(2024, 1, 2))
    _ingest(tenant_b, 5, name="DOE^JANE", day=date(2024, 3, 4))
    matching._STATEMENTS.clear()


def _keys(**values: str) -> list[Key]:
    return [Key(BY_KEYWORD[keyword.lower()], value) for keyword, value in values.items()]


def _both(actor, level, keys, **parents):
    """The rows by the shape's statement, and by the queryset Django builds, as sets."""
    fields = FIELDS[level]
    compiled = dicom_search_values(actor=actor, level=level, fields=fields, keys=keys, limit=100, **parents)
    built = search_rows(search_queryset(actor=actor, level=level, keys=keys, **parents).values_list(*fields),
                        limit=100, index_joins=True)  # fmt: skip
    assert compiled == built  # the same rows in the same order
    return compiled


SEARCHES = [
    (STUDY, {"PatientID": "PID1"}, {}),
    (STUDY, {"PatientID": "PID2"}, {}),
    (STUDY, {"PatientName": "MARTIN*"}, {}),
    (STUDY, {"PatientName": "martin^anne"}, {}),
    (STUDY, {"PatientName": "DOE*", "StudyDate": "20240301-20240331"}, {}),
    (STUDY, {"StudyDate": "20240102"}, {}),
    (STUDY, {"StudyDate": "-20240203"}, {}),
    (STUDY, {"StudyInstanceUID": "1.2.3.1\\1.2.3.3"}, {}),
    (STUDY, {"StudyInstanceUID": "1.2.3.2"}, {}),
    (STUDY, {"ModalitiesInStudy": "MR"}, {}),
    (STUDY, {"ModalitiesInStudy": "CT"}, {}),
    (STUDY, {"ModalitiesInStudy": "CT\\MR", "StudyDate": "20240101-20240229"}, {}),
    (STUDY, {"AccessionNumber": "ACC?"}, {}),
    (SERIES, {}, {"study_uid": "1.2.3.1"}),
    (SERIES, {}, {"study_uid": "1.2.3.2"}),
    (SERIES, {"Modality": "MR"}, {}),
    (SERIES, {"SeriesNumber": "1"}, {}),
    (INSTANCE, {}, {"study_uid": "1.2.3.1", "series_uid": "1.2.3.1.1"}),
    (INSTANCE, {}, {"study_uid": "1.2.3.2", "series_uid": "1.2.3.2.1"}),
    (INSTANCE, {}, {"study_uid": "1.2.3.1", "series_uid": "1.2.3.2.1"}),  # a series of another study: nothing
    (INSTANCE, {"SOPInstanceUID": "1.2.3.3.1.1"}, {}),
]


def test_every_shape_finds_what_django_builds(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        found = [_both(radiologist_a, level, _keys(**keys), **parents) for level, keys, parents in SEARCHES]
        # Twice: the second time every shape's statement is the one kept.
        assert [_both(radiologist_a, level, _keys(**keys), **parents) for level, keys, parents in SEARCHES] == found
    assert [len(rows) for rows in found] == [1, 1, 2, 1, 1, 1, 2, 2, 1, 1, 2, 2, 3, 1, 1, 1, 3, 1, 1, 0, 1]
    assert {row[1] for row in found[2]} == {"PID1", "PID2"}
    assert found[17][0][0] == "1.2.3.1.1.1"
    assert found[18][0][0] == "1.2.3.2.1.1"
    # Shapes met twice share one statement; a whole number (IntegerField converts it) is left to Django and kept
    # nowhere.
    assert None not in matching._STATEMENTS.values()
    # Met more than once: PatientID, one modality, the series of a study; the instances of a series thrice.
    assert len(matching._STATEMENTS) == len(SEARCHES) - 1 - 5


def test_one_compilation_per_shape(archive, tenant_a, radiologist_a):
    compiled = mock.Mock(wraps=matching._statement_compiled)
    with tenant_scope(tenant_a), mock.patch.object(matching, "_statement_compiled", compiled):
        for n in (1, 2, 3, 1):
            rows = dicom_search_values(actor=radiologist_a, level=SERIES, fields=FIELDS[SERIES], limit=10,
                                       study_uid=f"1.2.3.{n}")  # fmt: skip
            assert [row[2] for row in rows] == [f"1.2.3.{n}"]
        assert compiled.call_count == 1
        dicom_search_values(actor=radiologist_a, level=SERIES, fields=FIELDS[SERIES], limit=11, study_uid="1.2.3.1")
        dicom_search_values(actor=radiologist_a, level=SERIES, fields=FIELDS[SERIES][:2], limit=10, study_uid="1.2.3.1")
        assert compiled.call_count == 3  # another page, other columns: other statements
    with CaptureQueriesContext(connection) as queries, tenant_scope(tenant_a):
        dicom_search_values(actor=radiologist_a, level=SERIES, fields=FIELDS[SERIES], limit=10, study_uid="1.2.3.2")
    search = [q["sql"] for q in queries.captured_queries if "studies_series" in q["sql"]]
    assert len(search) == 1
    assert "'1.2.3.2'" in search[0]
    assert "'1.2.3.1'" not in search[0]


def test_tenants_never_share_a_statement(archive, tenant_a, tenant_b, radiologist_a, make_member):
    from tenants.models import Role

    radiologist_b = make_member(tenant_b, Role.RADIOLOGIST, "south-radiologist")
    for _ in range(2):
        with tenant_scope(tenant_a):
            a = _both(radiologist_a, STUDY, _keys(PatientName="MARTIN*"))
            a_doe = _both(radiologist_a, STUDY, _keys(PatientName="DOE^JANE"))
        with tenant_scope(tenant_b):
            b = _both(radiologist_b, STUDY, _keys(PatientName="MARTIN*"))
            b_doe = _both(radiologist_b, STUDY, _keys(PatientName="DOE^JANE"))
        assert {row[0] for row in a} == {"1.2.3.1", "1.2.3.2"}
        assert {row[0] for row in b} == {"1.2.3.4"}
        assert [row[0] for row in a_doe] == ["1.2.3.3"]
        assert [row[0] for row in b_doe] == ["1.2.3.5"]
    assert {key[0] for key in matching._STATEMENTS} == {tenant_a.pk, tenant_b.pk}


def test_who_sees_some_studies_never_gets_a_statement_of_the_shape(archive, tenant_a, radiologist_a, make_member):
    referrer = referrer_make(make_member, tenant_a)
    with tenant_scope(tenant_a):
        everyone = _both(radiologist_a, STUDY, _keys(PatientName="*"))
        theirs = _both(referrer, STUDY, _keys(PatientName="*"))
        series = _both(referrer, SERIES, [], study_uid="1.2.3.1")
        again = _both(radiologist_a, SERIES, [], study_uid="1.2.3.1")
    assert len(everyone) == 3
    assert [row[0] for row in theirs] == ["1.2.3.3"]
    assert series == []
    assert len(again) == 1
    assert len(matching._STATEMENTS) == 2  # the radiologist's two shapes only


def test_the_parameters_are_exactly_the_values_and_the_tenant(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        dicom_search_values(actor=radiologist_a, level=STUDY, fields=FIELDS[STUDY], limit=5,
                            keys=_keys(PatientName="MARTIN*", StudyDate="20240101-20240131"))  # fmt: skip
    (statement,) = matching._STATEMENTS.values()
    assert statement is not None
    assert statement.slots.count(-1) >= 1
    assert sorted(s for s in statement.slots if s >= 0) == [0, 1, 2, 3, 4]  # range low/high, like, the dates
    # A shape whose compiled parameters are not exactly its values is not kept: a value Django converts.
    matching._STATEMENTS.clear()
    with tenant_scope(tenant_a):
        dicom_search_values(actor=radiologist_a, level=SERIES, fields=FIELDS[SERIES], limit=5,
                            keys=_keys(SeriesNumber="1"))  # fmt: skip
    assert list(matching._STATEMENTS.values()) == []
