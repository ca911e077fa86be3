from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.events import EventType
from tenants import access, services
from tenants.access import Forbidden, NotVisible
from tenants.models import Membership, Role, User
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, membership_of, registered_client, token_for


def later(days: int = 30):
    return timezone.now() + timedelta(days=days)


# membership_add
# ------------------------------------------------------------------------------


def test_add_creates_the_account_joins_the_role_group_and_invites(
    tenant_a, admin_a, django_capture_on_commit_callbacks
):
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        membership = services.membership_add(
            actor=admin_a, tenant=tenant_a, username="north-new", email="new@example.org", role=Role.TENANT_ADMIN
        )
        user = membership.user
        assert access.has_perm(user, "tenants.manage_members", tenant_a)
        assert user.groups.filter(name="north:tenant_admin").exists()

    assert not user.has_usable_password()
    assert len(mail.outbox) == 1
    (event,) = events(tenant_a, EventType.MEMBER_ADDED)
    assert event.actor_user == admin_a
    assert event.target_id == str(membership.public_id)
    assert event.extra == {"role": Role.TENANT_ADMIN, "ends_at": None, "new_account": True}


def test_add_nothing_is_written_when_the_invitation_would_be_rolled_back(tenant_a, admin_a):
    with tenant_scope(tenant_a), pytest.raises(ValidationError):
        services.membership_add(
            actor=admin_a, tenant=tenant_a, username="Bad Name!", email="x@example.org", role="radiologist"
        )
    assert not User.objects.filter(username="Bad Name!").exists()
    assert mail.outbox == []
    assert events(tenant_a, EventType.MEMBER_ADDED) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"role": "surgeon"}, "role"),
        ({"role": Role.AUDITOR}, "ends_at"),
        ({"role": Role.RADIOLOGIST, "ends_at": timezone.now() - timedelta(days=1)}, "ends_at"),
        ({"role": Role.RADIOLOGIST, "email": ""}, "email"),
    ],
)
def test_add_validates(tenant_a, admin_a, kwargs, field):
    arguments = {"username": "north-x", "email": "x@example.org", **kwargs}
    with tenant_scope(tenant_a), pytest.raises(ValidationError) as caught:
        services.membership_add(actor=admin_a, tenant=tenant_a, **arguments)
    assert field in caught.value.message_dict


def test_add_refuses_a_current_member_and_a_deactivated_account(tenant_a, admin_a, radiologist_a, make_member):
    gone = make_member(tenant_a, Role.TECHNOLOGIST, "north-gone")
    with tenant_scope(tenant_a):
        services.membership_end(actor=admin_a, membership=membership_of(gone, tenant_a), reason="left")
        with pytest.raises(ValidationError, match="already a member"):
            services.membership_add(actor=admin_a, tenant=tenant_a, username="NORTH-RADIOLOGIST", role=Role.RADIOLOGIST)
        with pytest.raises(ValidationError, match="deactivated"):
            services.membership_add(actor=admin_a, tenant=tenant_a, username="north-gone", role=Role.RADIOLOGIST)


def test_add_needs_manage_members(tenant_a, compliance_a, radiologist_a):
    with tenant_scope(tenant_a):
        with pytest.raises(Forbidden):
            services.membership_add(
                actor=compliance_a, tenant=tenant_a, username="n", email="n@example.org", role=Role.RADIOLOGIST
            )
        with pytest.raises(NotVisible):
            services.membership_add(
                actor=radiologist_a, tenant=tenant_a, username="n", email="n@example.org", role=Role.RADIOLOGIST
            )


# membership_change_role
# ------------------------------------------------------------------------------


def test_change_role_moves_the_role_group_and_is_idempotent(tenant_a, admin_a, radiologist_a):
    with tenant_scope(tenant_a):
        membership = membership_of(radiologist_a, tenant_a)
        assert not access.has_perm(radiologist_a, "tenants.view_audit", tenant_a)
        services.membership_change_role(actor=admin_a, membership=membership, role=Role.COMPLIANCE_OFFICER)
        services.membership_change_role(actor=admin_a, membership=membership, role=Role.COMPLIANCE_OFFICER)
        assert access.has_perm(radiologist_a, "tenants.view_audit", tenant_a)
        assert list(radiologist_a.groups.values_list("name", flat=True)) == ["north:compliance_officer"]

    (event,) = events(tenant_a, EventType.MEMBER_ROLE_CHANGED)
    assert event.extra == {"from": Role.RADIOLOGIST, "to": Role.COMPLIANCE_OFFICER}
    assert event.actor_user == admin_a


def test_change_role_validates(tenant_a, admin_a, radiologist_a):
    with tenant_scope(tenant_a):
        own = membership_of(admin_a, tenant_a)
        other = membership_of(radiologist_a, tenant_a)
        with pytest.raises(ValidationError, match="your own administrator role"):
            services.membership_change_role(actor=admin_a, membership=own, role=Role.RADIOLOGIST)
        with pytest.raises(ValidationError, match="must have an end date"):
            services.membership_change_role(actor=admin_a, membership=other, role=Role.AUDITOR)
        services.membership_end(actor=admin_a, membership=other, reason="left")
        with pytest.raises(ValidationError, match="has ended"):
            services.membership_change_role(actor=admin_a, membership=other, role=Role.TECHNOLOGIST)
    assert events(tenant_a, EventType.MEMBER_ROLE_CHANGED) == []


def test_change_role_needs_manage_members(tenant_a, compliance_a, technologist_a):
    with tenant_scope(tenant_a), pytest.raises(Forbidden):
        services.membership_change_role(
            actor=compliance_a, membership=membership_of(technologist_a, tenant_a), role=Role.RADIOLOGIST
        )


# membership_set_end
# ------------------------------------------------------------------------------


def test_set_end_is_idempotent_and_audited(tenant_a, admin_a, radiologist_a):
    ends_at = later()
    with tenant_scope(tenant_a):
        membership = membership_of(radiologist_a, tenant_a)
        services.membership_set_end(actor=admin_a, membership=membership, ends_at=ends_at)
        services.membership_set_end(actor=admin_a, membership=membership, ends_at=ends_at)
        services.membership_set_end(actor=admin_a, membership=membership, ends_at=None)

    assert membership_of(radiologist_a, tenant_a).ends_at is None
    first, cleared = events(tenant_a, EventType.MEMBER_END_DATE_SET)
    assert first.extra == {"ends_at": ends_at.isoformat()}
    assert cleared.extra == {"ends_at": None}


def test_set_end_validates(tenant_a, admin_a, auditor_a, compliance_a, radiologist_a):
    with tenant_scope(tenant_a):
        with pytest.raises(ValidationError, match="must have an end date"):
            services.membership_set_end(actor=admin_a, membership=membership_of(auditor_a, tenant_a), ends_at=None)
        with pytest.raises(ValidationError, match="in the future"):
            services.membership_set_end(
                actor=admin_a, membership=membership_of(radiologist_a, tenant_a), ends_at=timezone.now()
            )
        with pytest.raises(Forbidden):
            services.membership_set_end(
                actor=compliance_a, membership=membership_of(radiologist_a, tenant_a), ends_at=later()
            )


# membership_end
# ------------------------------------------------------------------------------


def test_end_revokes_tokens_ends_sessions_and_deactivates(client_for, tenant_a, admin_a, radiologist_a):
    registered_client(client_for(radiologist_a), radiologist_a)
    token, _ = token_for(radiologist_a, tenant_a)
    with tenant_scope(tenant_a):
        membership = services.membership_end(
            actor=admin_a, membership=membership_of(radiologist_a, tenant_a), reason="left"
        )
        again = services.membership_end(actor=admin_a, membership=membership, reason="twice")
        token.refresh_from_db()
        assert not access.has_perm(radiologist_a, "tenants.view_members", tenant_a)

    assert membership.status == again.status == Membership.Status.ENDED
    assert again.ended_reason == "left"
    assert token.revoked_at is not None
    radiologist_a.refresh_from_db()
    assert radiologist_a.is_active is False
    assert list(radiologist_a.groups.all()) == []
    (event,) = events(tenant_a, EventType.MEMBERSHIP_ENDED)
    assert event.actor_user == admin_a
    assert event.extra == {"reason": "left", "tokens_revoked": 1, "sessions_ended": 1, "deactivated": True}


def test_end_keeps_an_account_with_another_organisation(tenant_a, tenant_b, admin_a, outsider_b):
    with tenant_scope(tenant_a):
        membership = Membership(tenant=tenant_a, user=outsider_b, role=Role.RADIOLOGIST)
        membership.full_clean()
        membership.save()
    south_token, _ = token_for(outsider_b, tenant_b)
    with tenant_scope(tenant_a):
        services.membership_end(actor=admin_a, membership=membership, reason="rotation over")
    outsider_b.refresh_from_db()
    with tenant_scope(tenant_b):
        south_token.refresh_from_db()

    assert outsider_b.is_active is True
    assert south_token.revoked_at is None


def test_end_refuses_your_own_membership_and_members_without_the_permission(
    tenant_a, admin_a, compliance_a, radiologist_a
):
    with tenant_scope(tenant_a):
        with pytest.raises(ValidationError, match="your own membership"):
            services.membership_end(actor=admin_a, membership=membership_of(admin_a, tenant_a), reason="x")
        with pytest.raises(Forbidden):
            services.membership_end(actor=compliance_a, membership=membership_of(radiologist_a, tenant_a), reason="x")
    assert events(tenant_a, EventType.MEMBERSHIP_ENDED) == []


def test_end_by_the_system_names_the_job(tenant_a, auditor_a):
    with tenant_scope(tenant_a):
        services.membership_end(actor=None, membership=membership_of(auditor_a, tenant_a), reason="end date reached")
    (event,) = events(tenant_a, EventType.MEMBERSHIP_ENDED)
    assert event.actor_user is None
    assert event.system_principal == "enclave:membership-expiry"
