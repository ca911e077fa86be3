"""Series and instance searches of a person who sees every study leave out the visible-studies subquery (one
relation fewer for PostgreSQL's planner on every such search); one who sees only some studies still finds only
theirs. Through `search_queryset`, as QIDO-RS, C-FIND and C-GET search, as the application's role under the
tenant policy."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem, Series, Study
from studies.selectors.catalogue import INSTANCE, SERIES
from studies.selectors.matching import search_queryset
from tenants import access
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import referrer_make

pytestmark = pytest.mark.django_db(transaction=True)


def _series_of(tenant: Tenant, uid: str, *, referring: str = "ROE^RICHARD") -> Series:
    """One instance of a new study and series, through the real ingest."""
    data = make_instance(patient_id=f"P{uid}", study_uid=f"{uid}.0", series_uid=uid, sop_uid=f"{uid}.1",
                         referring=referring)  # fmt: skip
    with tenant_scope(tenant):
        services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
        return Series.objects.select_related("study").get(series_instance_uid=uid)


def _searched(actor, level, **parents) -> tuple[set[str], str]:
    """The series UIDs a search finds, and the SQL it sent."""
    with CaptureQueriesContext(connection) as queries:
        rows = list(search_queryset(actor=actor, level=level, **parents))
    found = {row.series_instance_uid if level is SERIES else row.series.series_instance_uid for row in rows}
    return found, queries.captured_queries[-1]["sql"]


def test_visible_returns_the_queryset_itself_only_to_who_sees_every_row(tenant_a, radiologist_a, make_member):
    referrer = referrer_make(make_member, tenant_a)
    with tenant_scope(tenant_a):
        everything = Study.objects.all()
        assert access.visible(radiologist_a, "studies.view_study", everything) is everything
        assert access.visible(referrer, "studies.view_study", everything) is not everything


@pytest.mark.parametrize("level", [SERIES, INSTANCE])
def test_who_sees_every_study_searches_without_the_subquery(tenant_a, tenant_b, radiologist_a, level):
    mine = _series_of(tenant_a, "1.2.3.41")
    _series_of(tenant_a, "1.2.3.42")
    _series_of(tenant_b, "1.2.3.43")
    with tenant_scope(tenant_a):
        found, sql = _searched(radiologist_a, level)
        assert found == {"1.2.3.41", "1.2.3.42"}  # not tenant B's
        assert "studies_study" in sql
        assert " IN (SELECT" not in sql
        found, _ = _searched(radiologist_a, level, study_uid=mine.study.study_instance_uid)
        assert found == {"1.2.3.41"}


@pytest.mark.parametrize("level", [SERIES, INSTANCE])
def test_who_sees_some_studies_finds_only_theirs(tenant_a, make_member, level):
    referrer = referrer_make(make_member, tenant_a)
    theirs = _series_of(tenant_a, "1.2.3.51", referring="DOE^JOHN")
    not_theirs = _series_of(tenant_a, "1.2.3.52")
    with tenant_scope(tenant_a):
        found, sql = _searched(referrer, level)
        assert found == {"1.2.3.51"}
        assert " IN (SELECT" in sql
        found, _ = _searched(referrer, level, study_uid=not_theirs.study.study_instance_uid)
        assert found == set()
        found, _ = _searched(referrer, level, study_uid=theirs.study.study_instance_uid)
        assert found == {"1.2.3.51"}
