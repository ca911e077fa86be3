"""Unique users and the tenant-owned base: what the models refuse by themselves."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from tenants.models import ApiToken, Membership, Role, User
from tenants.scoping import TenantScopeError, tenant_scope
from tests.tenants.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_user_names_are_unique_in_any_case():
    UserFactory(username="Alice")
    with pytest.raises(IntegrityError), transaction.atomic():
        UserFactory(username="alice")
    assert User.objects.get_by_natural_key("ALICE").username == "Alice"


def test_no_shared_or_default_accounts_after_migrations():
    assert not User.objects.filter(username__iregex=r"^(admin|root|sa|administrator)$").exists()
    assert User.objects.count() == 0


def test_every_user_has_an_immutable_subject_id():
    first, second = UserFactory(), UserFactory()
    assert first.subject_uuid != second.subject_uuid


def test_tenant_rows_cannot_be_saved_without_a_scope_or_into_another_tenant(tenant_a, tenant_b, radiologist_a):
    membership = Membership(tenant=tenant_a, user=UserFactory(), role=Role.TECHNOLOGIST)
    with pytest.raises(TenantScopeError):
        membership.save()
    with tenant_scope(tenant_b), pytest.raises(TenantScopeError):
        membership.save()
    with tenant_scope(tenant_a):
        existing = Membership.objects.get(user=radiologist_a)
    with tenant_scope(tenant_b), pytest.raises(TenantScopeError):
        existing.save()


def test_a_row_cannot_point_at_another_tenants_row(tenant_a, tenant_b, radiologist_a, outsider_b):
    from devices.models import Device
    from studies.models import IngestItem

    with tenant_scope(tenant_b):
        device_b = Device.objects.create(kind=Device.Kind.MODALITY, name="CT", ae_title="SOUTH_CT")
    with tenant_scope(tenant_a):
        item = IngestItem(
            tenant=tenant_a, source=IngestItem.Source.UPLOAD, batch="00000000-0000-0000-0000-000000000001",
            size=1, sha256="0" * 64, device=device_b,
        )  # fmt: skip
        with pytest.raises(ValidationError):
            item.save()


def test_an_auditor_membership_needs_an_end_date(tenant_a):
    with tenant_scope(tenant_a), pytest.raises(ValidationError):
        Membership(tenant=tenant_a, user=UserFactory(), role=Role.AUDITOR).save()


def test_scoped_queries_fail_closed(tenant_a):
    with pytest.raises(TenantScopeError):
        ApiToken.objects.count()
    with tenant_scope(tenant_a):
        assert ApiToken.objects.count() == 0
