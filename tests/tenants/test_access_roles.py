"""Who may look for images and who may break the glass: decided in tenants/access.py, from one set of image
roles (issue 7), with the studies app registering which permission a break-glass grant stands in for."""

from __future__ import annotations

import pytest

from audit.events import EventType
from audit.models import AuditEvent
from tenants import access
from tenants.models import Membership, Role
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import study_make

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role", list(Role.values))
def test_image_roles_see_images_and_may_break_the_glass(tenant_a, make_member, role):
    user = make_member(tenant_a, role, f"north-{role}", ends_in_days=30 if role == Role.AUDITOR else None)
    with tenant_scope(tenant_a):
        if role in access.IMAGE_ROLES:
            access.break_glass_require(user)
            assert access.may_see_images(user, tenant_a)
        else:
            with pytest.raises(access.Forbidden) as refused:
                access.break_glass_require(user)
            assert refused.value.code == "not_a_clinician"
            assert not access.may_see_images(user, tenant_a)


def test_image_roles_are_the_clinical_roles():
    assert {Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.REFERRING_PHYSICIAN} == access.IMAGE_ROLES


def test_break_glass_needs_a_current_membership_in_the_scope(tenant_a, tenant_b, make_member):
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-referrer")
    with tenant_scope(tenant_b), pytest.raises(access.Forbidden):
        access.break_glass_require(referrer)  # a clinician of another tenant
    with pytest.raises(access.Forbidden):
        access.break_glass_require(referrer)  # no scope at all
    with tenant_scope(tenant_a):
        Membership.objects.filter(user=referrer).update(status=Membership.Status.ENDED)
        with pytest.raises(access.Forbidden):
            access.break_glass_require(referrer)


def test_break_glass_is_needed_only_for_what_one_cannot_see(tenant_a, radiologist_a, make_member):
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-referrer")
    study = study_make(tenant_a, referring_key="SOMEONE^ELSE")
    with tenant_scope(tenant_a):
        assert access.break_glass_needed(referrer, study)
        assert not access.break_glass_needed(radiologist_a, study)  # sees every study of the tenant already
        membership = Membership.objects.get(user=referrer)
        with pytest.raises(access.Forbidden):
            access.break_glass_needed(referrer, membership)  # only registered models can be opened so


def test_the_doors_refuse_break_glass_to_other_roles(tenant_a, admin_a, client_for, api_client_for):
    study_make(tenant_a, accession="ER-1")
    page = client_for(admin_a).get(f"/t/{tenant_a.slug}/break-glass/")
    assert page.status_code == 403
    body = {"study": "ER-1", "reason": "trauma", "otp_token": "123456"}
    api = api_client_for(admin_a, tenant_a).post(f"/api/v1/t/{tenant_a.slug}/break-glass/", body, format="json")
    assert api.status_code == 403
    assert api.json()["code"] == "not_a_clinician"
    with tenant_scope(tenant_a):
        refusals = AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED, actor_user=admin_a).count()
    assert refusals == 2


def test_tenant_permissions_are_guardians_answer_for_groups_and_direct_grants(tenant_a, tenant_b, make_member):
    """The tenant permissions read in one statement are what guardian's two queries give: the role group's, a
    permission granted to the person directly on the tenant, nothing from another tenant's grants."""
    from guardian.core import ObjectPermissionChecker
    from guardian.shortcuts import assign_perm

    user = make_member(tenant_a, Role.TECHNOLOGIST, "north-tech-perms")
    assign_perm("tenants.view_audit", user, tenant_a)
    assign_perm("tenants.manage_members", user, tenant_b)
    checker = ObjectPermissionChecker(user)
    expected = {f"tenants.{c}" for c in set(checker.get_group_perms(tenant_a)) | set(checker.get_user_perms(tenant_a))}
    assert access.tenant_permissions(user, tenant_a) == expected
    assert expected == set(access.ROLE_PERMISSIONS[Role.TECHNOLOGIST]) | {"tenants.view_audit"}
    with tenant_scope(tenant_a):
        assert access.has_perm(user, "tenants.view_audit", tenant_a)
        assert not access.has_perm(user, "tenants.manage_members", tenant_a)
    with tenant_scope(tenant_b):
        assert not access.has_perm(user, "tenants.view_studies", tenant_b)
