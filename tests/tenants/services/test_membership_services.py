from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.events import EventType
from tenants import access, services
from tenants.access import Forbidden
from tenants.models import Membership, Role
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, membership_of, registered_client, token_for


def later(days: int = 30):
    return timezone.now() + timedelta(days=days)


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


def test_end_in_one_tenant_leaves_the_session_and_tokens_of_the_other(
    client_for, tenant_a, tenant_b, admin_a, outsider_b
):
    """Issue 8 #3: north ending a membership logged the person's south session out."""
    with tenant_scope(tenant_a):
        north = Membership(tenant=tenant_a, user=outsider_b, role=Role.RADIOLOGIST)
        north.full_clean()
        north.save()
    browser = registered_client(client_for(outsider_b), outsider_b)
    assert browser.get("/t/north/").status_code == 200
    assert browser.get("/t/south/").status_code == 200
    _, north_raw = token_for(outsider_b, tenant_a)
    _, south_raw = token_for(outsider_b, tenant_b)

    with tenant_scope(tenant_a):
        services.membership_end(actor=admin_a, membership=north, reason="rotation over")

    assert browser.get("/t/north/").status_code == 404  # north's access ended at once
    assert browser.get("/t/south/").status_code == 200  # the same session still works in south
    api = browser.__class__()
    assert api.get("/api/v1/t/north/tokens/", HTTP_AUTHORIZATION=f"Bearer {north_raw}").status_code == 401
    assert api.get("/api/v1/t/south/tokens/", HTTP_AUTHORIZATION=f"Bearer {south_raw}").status_code == 200
    event = events(tenant_a, EventType.MEMBERSHIP_ENDED)[-1]
    assert event.extra["sessions_ended"] == 0
    assert event.extra["deactivated"] is False


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
