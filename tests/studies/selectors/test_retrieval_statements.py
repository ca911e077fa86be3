"""A retrieval's rows by a statement compiled once per shape (studies.selectors.storage.retrieval_rows): the same
study and rows as Django reads with the same queryset for a study, a series and an instance, the UIDs
of each request and never those of the request that compiled it, one statement per tenant and shape, and none for
a caller who may see only some studies."""

from __future__ import annotations

import uuid
from unittest import mock

import pytest

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem, Study
from studies.selectors import storage as retrieval
from studies.selectors.storage import _ROW_COLUMNS, _STUDY, RetrievalRow, _rows_queryset, retrieval_rows
from studies.storage.blobs import BlobRef
from tenants import access
from tenants.models import Role, Tenant
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import referrer_make

pytestmark = pytest.mark.django_db(transaction=True)


def _ingest(tenant: Tenant, study: int, series: int, instance: int, *, referring: str = "ROE^RICHARD") -> None:
    data = make_instance(
        patient_id=f"PID{study}", patient_name=f"PATIENT^{study}", study_uid=f"1.2.3.{study}",
        series_uid=f"1.2.3.{study}.{series}", sop_uid=f"1.2.3.{study}.{series}.{instance}", series_number=series,
        instance_number=instance, accession=f"ACC{study}", referring=referring, rows=16, columns=16,
    )  # fmt: skip
    with tenant_scope(tenant):
        services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)


@pytest.fixture
def archive(tenant_a: Tenant, tenant_b: Tenant) -> None:
    """Tenant A: study 1 (two series of three and two instances), study 2 (referring DOE^JOHN, one series of two);
    tenant B: a study 1 of its own (other rows, the same UIDs)."""
    for series, instances in ((1, 3), (2, 2)):
        for instance in range(instances, 0, -1):  # stored out of order: the order is the statement's
            _ingest(tenant_a, 1, series, instance)
    for instance in (1, 2):
        _ingest(tenant_a, 2, 1, instance, referring="DOE^JOHN")
    _ingest(tenant_b, 1, 1, 1)
    retrieval._STATEMENTS.clear()


RESOURCES = [
    ("1.2.3.1", None, None),
    ("1.2.3.1", "1.2.3.1.2", None),
    ("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.2"),
    ("1.2.3.2", None, None),
    ("1.2.3.2", "1.2.3.2.1", None),
    ("1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.1"),
]


def _django_rows(*, actor, study_uid, series_uid=None, sop_uid=None):
    """The same queryset read by Django at every call (what `retrieval_rows` did before it kept statements)."""
    visible = access.visible(actor, "studies.view_study", Study.objects.all())
    values = list(_rows_queryset(visible, study_uid, series_uid, sop_uid))
    if not values:
        raise access.NotVisible()
    assert len(values[0]) == len(_ROW_COLUMNS)
    return values[0][:_STUDY], [RetrievalRow(r[_STUDY], r[_STUDY + 1], BlobRef(*r[_STUDY + 2 :])) for r in values]


def _both(actor, study, series=None, sop=None):
    """The compiled statement's answer and Django's, each the study row and the rows, or NotVisible."""
    answers = []
    for read in (retrieval_rows, _django_rows):
        try:
            answers.append(read(actor=actor, study_uid=study, series_uid=series, sop_uid=sop))
        except access.NotVisible:
            answers.append("not visible")
    return answers


def test_every_resource_is_what_django_reads_with_its_own_uids(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        first = [_both(radiologist_a, *resource) for resource in RESOURCES]
        again = [_both(radiologist_a, *resource) for resource in RESOURCES]  # now by the shapes' statements
    assert first == again
    for compiled, django in first:
        assert compiled == django
    study, rows = first[0][0]
    assert study[4] == "1.2.3.1"
    assert study[5] == "ACC1"
    assert [row.sop_instance_uid for row in rows] == [
        "1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.1.3", "1.2.3.1.2.1", "1.2.3.1.2.2",
    ]  # fmt: skip
    assert [row.sop_instance_uid for row in first[2][0][1]] == ["1.2.3.1.1.2"]
    assert [row.sop_instance_uid for row in first[4][0][1]] == ["1.2.3.2.1.1", "1.2.3.2.1.2"]
    assert all(isinstance(row.blob.wrapped_key, bytes) and row.blob.size for row in rows)
    assert len(retrieval._STATEMENTS) == 3  # a study, a series, an instance
    assert all(statement is not None and statement.prepared for statement in retrieval._STATEMENTS.values())


def test_what_names_nothing_is_not_visible_by_the_statement_too(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        _both(radiologist_a, *RESOURCES[2])  # the instance's shape compiled
        for resource in [
            ("1.2.3.9", None, None),
            ("1.2.3.1", "1.2.3.2.1", None),
            ("1.2.3.1", "1.2.3.1.1", "1.2.3.1.2.1"),
        ]:
            assert _both(radiologist_a, *resource) == ["not visible", "not visible"]


def test_one_compilation_per_shape(archive, tenant_a, radiologist_a):
    compiled = mock.Mock(wraps=retrieval._statement_compiled)
    with tenant_scope(tenant_a), mock.patch.object(retrieval, "_statement_compiled", compiled):
        for resource in RESOURCES * 2:
            _both(radiologist_a, *resource)
    assert compiled.call_count == 3


def test_tenants_never_share_a_statement(archive, tenant_a, tenant_b, radiologist_a, make_member):
    radiologist_b = make_member(tenant_b, Role.RADIOLOGIST, "south-radiologist")
    with tenant_scope(tenant_a):
        a = _both(radiologist_a, "1.2.3.1", "1.2.3.1.1")
    with tenant_scope(tenant_b):
        b = _both(radiologist_b, "1.2.3.1", "1.2.3.1.1")
    with tenant_scope(tenant_a):
        a_again = _both(radiologist_a, "1.2.3.1", "1.2.3.1.1")
    assert a == a_again
    assert a[0] == a[1]
    assert b[0] == b[1]
    assert len(a[0][1]) == 3
    assert len(b[0][1]) == 1
    assert {row.blob.tenant_id for row in a[0][1]} == {tenant_a.pk}
    assert {row.blob.tenant_id for row in b[0][1]} == {tenant_b.pk}
    assert {key[0] for key in retrieval._STATEMENTS} == {tenant_a.pk, tenant_b.pk}


def test_who_sees_some_studies_never_gets_a_statement_of_the_shape(archive, tenant_a, radiologist_a, make_member):
    referrer = referrer_make(make_member, tenant_a)
    with tenant_scope(tenant_a):
        _both(radiologist_a, "1.2.3.1", "1.2.3.1.1")  # the series' shape compiled for one who sees every study
        theirs = _both(referrer, "1.2.3.2", "1.2.3.2.1")
        not_theirs = _both(referrer, "1.2.3.1", "1.2.3.1.1")
    assert theirs[0] == theirs[1]
    assert len(theirs[0][1]) == 2
    assert not_theirs == ["not visible", "not visible"]
    assert list(retrieval._STATEMENTS) == [(tenant_a.pk, True, False)]


def test_the_parameters_are_exactly_the_uids_and_the_tenant(archive, tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        retrieval_rows(actor=radiologist_a, study_uid="1.2.3.1", series_uid="1.2.3.1.1", sop_uid="1.2.3.1.1.1")
    (statement,) = retrieval._STATEMENTS.values()
    assert statement is not None
    assert statement.slots.count(-1) >= 1
    assert sorted(s for s in statement.slots if s >= 0) == [0, 1, 2]
    assert "1.2.3.1" not in statement.sql  # the UIDs are parameters, never written into the text


def test_every_study_is_told_without_building_the_studies_queryset(archive, tenant_a, radiologist_a, make_member):
    """Once a shape is compiled, a caller who sees every study gets its rows without a Study queryset being built
    (`access.visible_unless_every`); a caller who sees some studies still gets Django's path, the same rows."""
    manager = type(Study.objects)
    built: list[int] = []
    get_queryset = manager.get_queryset

    def counted(self):
        built.append(1)
        return get_queryset(self)

    referrer = referrer_make(make_member, tenant_a)
    with tenant_scope(tenant_a):
        retrieval_rows(actor=radiologist_a, study_uid="1.2.3.1", series_uid="1.2.3.1.1")  # the shape compiled
        with mock.patch.object(manager, "get_queryset", counted):
            _, rows = retrieval_rows(actor=radiologist_a, study_uid="1.2.3.1", series_uid="1.2.3.1.1")
            assert built == []
            assert [row.sop_instance_uid for row in rows] == ["1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.1.3"]
            theirs = _both(referrer, "1.2.3.2", "1.2.3.2.1")
    assert built
    assert theirs[0] == theirs[1]
