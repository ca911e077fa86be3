"""Who sees which study, decided by tenants.access with the studies app's rule (minimum necessary)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import BreakGlassGrant, IngestItem, Study, StudyShare
from studies.selectors import study_list
from tenants import access
from tenants.models import Role
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db(transaction=True)


def ingest(tenant, **kw) -> Study:
    data = make_instance(**kw)
    with tenant_scope(tenant):
        item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
        item.refresh_from_db()
        return item.instance.series.study


@pytest.fixture
def referrer(make_member, tenant_a):
    user = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-referrer")
    user.first_name, user.last_name = "John", "Doe"
    user.save(update_fields=["first_name", "last_name"])
    return user


def visible_uids(user, tenant) -> set[str]:
    with tenant_scope(tenant):
        return set(study_list(actor=user).values_list("study_instance_uid", flat=True))


def test_radiologists_see_every_study_and_admins_compliance_auditors_none(
    tenant_a, radiologist_a, technologist_a, admin_a, compliance_a, auditor_a
):
    study = ingest(tenant_a)
    assert visible_uids(radiologist_a, tenant_a) == {study.study_instance_uid}
    assert visible_uids(technologist_a, tenant_a) == {study.study_instance_uid}
    for user in (admin_a, compliance_a, auditor_a):
        assert visible_uids(user, tenant_a) == set()


def test_a_referring_physician_sees_the_studies_that_name_them(tenant_a, referrer):
    theirs = ingest(tenant_a, referring="DOE^JOHN^^DR")
    ingest(tenant_a, referring="ROE^RICHARD")
    assert visible_uids(referrer, tenant_a) == {theirs.study_instance_uid}
    with tenant_scope(tenant_a):
        assert access.has_perm(referrer, "studies.view_study", theirs)


def test_a_share_works_while_in_force_and_stops_at_once(tenant_a, referrer, radiologist_a):
    study = ingest(tenant_a, referring="ROE^RICHARD")
    with tenant_scope(tenant_a):
        share = StudyShare.objects.create(
            study=study, grantee=referrer, granted_by=radiologist_a, expires_at=timezone.now() + timedelta(hours=1)
        )
        access.object_grant(perm="studies.view_study", user=referrer, obj=study)
    assert visible_uids(referrer, tenant_a) == {study.study_instance_uid}
    with tenant_scope(tenant_a):
        StudyShare.objects.filter(pk=share.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert visible_uids(referrer, tenant_a) == set()  # expired: the grant alone is not enough
    with tenant_scope(tenant_a):
        StudyShare.objects.filter(pk=share.pk).update(
            expires_at=timezone.now() + timedelta(hours=1), revoked_at=timezone.now()
        )
    assert visible_uids(referrer, tenant_a) == set()


def test_a_share_row_without_the_grant_shows_nothing(tenant_a, referrer, radiologist_a):
    study = ingest(tenant_a, referring="ROE^RICHARD")
    with tenant_scope(tenant_a):
        StudyShare.objects.create(
            study=study, grantee=referrer, granted_by=radiologist_a, expires_at=timezone.now() + timedelta(hours=1)
        )
    assert visible_uids(referrer, tenant_a) == set()


def test_break_glass_shows_its_study_until_it_expires(tenant_a, referrer):
    study = ingest(tenant_a, referring="ROE^RICHARD")
    with tenant_scope(tenant_a):
        grant = BreakGlassGrant.objects.create(
            study=study, user=referrer, reason="trauma bay", expires_at=timezone.now() + timedelta(hours=4)
        )
    assert visible_uids(referrer, tenant_a) == {study.study_instance_uid}
    with tenant_scope(tenant_a):
        BreakGlassGrant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert visible_uids(referrer, tenant_a) == set()


def test_nothing_crosses_tenants(tenant_a, tenant_b, radiologist_a, outsider_b):
    study = ingest(tenant_a)
    assert visible_uids(outsider_b, tenant_b) == set()
    with tenant_scope(tenant_b):
        assert not access.has_perm(outsider_b, "studies.view_study", study)
    with tenant_scope(tenant_a):
        assert not access.has_perm(outsider_b, "studies.view_study", study)  # not a member of north
