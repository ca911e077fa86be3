"""The rows a STOW-RS request reads its verdicts from (studies.dicomweb.stow `_VerdictRows`): the statement compiled
once per tenant and sent again with each request's batch, its rows exactly Django's, the permission decision and the
tenant scope still taken at every read."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db.models.sql.compiler import SQLCompiler

from studies.dicom.synthetic import make_study
from studies.dicomweb import stow
from studies.models import IngestItem
from studies.selectors import ingest_item_list
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import post_parts, referenced

pytestmark = pytest.mark.django_db(transaction=True)

URL_A = "/dicomweb/north/studies"
URL_B = "/dicomweb/south/studies"


@pytest.fixture(autouse=True)
def _no_statement_kept() -> None:
    stow._VERDICT_STATEMENTS.clear()


def _stored_batch(client, url: str, tenant, files) -> object:
    """The batch of a STOW-RS request whose every part was stored (the tests' Celery runs the task at the commit)."""
    response = post_parts(client, url, files)
    assert response.status_code == 200, response.content
    assert len(referenced(response.json())) == len(files)
    with tenant_scope(tenant):
        return IngestItem.objects.order_by("-pk").values_list("batch", flat=True).first()


def _rows(actor, tenant, batch) -> stow._VerdictRows:
    items = ingest_item_list(actor=actor, batch=batch).select_related(None).order_by()
    return stow._VerdictRows(items, batch=batch, tenant_pk=tenant.pk)


def _django_rows(actor, batch) -> list[tuple[object, ...]]:
    return list(ingest_item_list(actor=actor, batch=batch).order_by().values_list(*stow._VERDICT_COLUMNS))


def test_a_second_batch_is_read_by_the_statement_compiled_for_the_first(api_client_for, tenant_a, technologist_a):
    client = api_client_for(technologist_a, tenant_a)
    first = _stored_batch(client, URL_A, tenant_a, make_study(series=1, instances_per_series=2))
    second = _stored_batch(client, URL_A, tenant_a, make_study(series=2, instances_per_series=2))

    with tenant_scope(tenant_a):
        assert sorted(_rows(technologist_a, tenant_a, first).read()) == sorted(_django_rows(technologist_a, first))
        assert [statement is not None for statement in stow._VERDICT_STATEMENTS.values()] == [True]
        expected = sorted(_django_rows(technologist_a, second))
        # Nothing compiled for the second batch: the kept statement, sent with its UUID.
        with mock.patch.object(SQLCompiler, "as_sql", side_effect=AssertionError("compiled again")):
            rows = sorted(_rows(technologist_a, tenant_a, second).read())
    assert rows == expected
    assert len(rows) == 4
    assert {row[1] for row in rows} == {IngestItem.State.STORED}
    assert all(row[5] for row in rows)  # the instances' UIDs, through the joins


def test_the_rows_keep_the_tenant_scope_and_the_permission_decision(
    api_client_for, tenant_a, tenant_b, technologist_a, compliance_a, outsider_b
):
    two, three = make_study(series=1, instances_per_series=2), make_study(series=1, instances_per_series=3)
    batch_a = _stored_batch(api_client_for(technologist_a, tenant_a), URL_A, tenant_a, two)
    batch_b = _stored_batch(api_client_for(outsider_b, tenant_b), URL_B, tenant_b, three)

    with tenant_scope(tenant_a):
        assert len(_rows(technologist_a, tenant_a, batch_a).read()) == 2  # tenant A's statement kept
        # A member who may not send: no rows, whatever is kept.
        denied = _rows(compliance_a, tenant_a, batch_a)
        assert denied.statement is None
        assert denied.read() == []
    with tenant_scope(tenant_b):
        assert _rows(outsider_b, tenant_b, batch_a).read() == []  # another tenant's batch is not in this scope
        assert len(_rows(outsider_b, tenant_b, batch_b).read()) == 3
    assert sorted(tenant for tenant, _ in stow._VERDICT_STATEMENTS) == sorted([tenant_a.pk, tenant_b.pk])


def test_a_queryset_with_another_condition_gets_a_statement_of_its_own(api_client_for, tenant_a, technologist_a):
    batch = _stored_batch(api_client_for(technologist_a, tenant_a), URL_A, tenant_a, make_study(series=1))
    with tenant_scope(tenant_a):
        assert len(_rows(technologist_a, tenant_a, batch).read()) > 0
        items = ingest_item_list(actor=technologist_a, batch=batch).select_related(None).order_by()
        # A condition more (as a selector filtering by the sender would add): never the statement kept without it.
        narrower = stow._VerdictRows(items.filter(source=IngestItem.Source.UPLOAD), batch=batch, tenant_pk=tenant_a.pk)
        assert narrower.read() == []  # these parts came by STOW-RS
    assert len(stow._VERDICT_STATEMENTS) == 2
