"""Memberships: a person's role in a tenant, its end, and the one way it is opened without an invitation
(platform operators). Each change writes its audit event in its transaction.

Neither a tenant administrator nor a clinician sharing a study adds an account directly: that is an invitation
the person accepts (`tenants.services.invitations`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from axes.utils import reset as axes_reset
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.events import EventType
from audit.services import audit_event_record, participant
from tenants import access, selectors
from tenants.models import ApiToken, Membership, Role, Tenant, User
from tenants.scoping import tenant_scope
from tenants.services.sessions import sessions_end_for_user
from tenants.services.tokens import tokens_revoke

# Members
# ------------------------------------------------------------------------------


def role_and_end_validate(role: str, ends_at: datetime | None) -> None:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if role == Role.AUDITOR and ends_at is None:
        raise ValidationError({"ends_at": "An auditor's membership must have an end date."})
    if ends_at is not None and ends_at <= timezone.now():
        raise ValidationError({"ends_at": "The end date must be in the future."})


def membership_open(*, tenant: Tenant, user: User, role: str, ends_at: datetime | None) -> Membership:
    """Give `user` `role` in the current tenant: a new membership, or their former one reinstated (one row per
    person and tenant), with the role group to match. Callers check who may do it and record the event."""
    membership = Membership.objects.filter(user=user).first() or Membership(tenant=tenant, user=user)
    membership.role, membership.ends_at = role, ends_at
    membership.status, membership.ended_at, membership.ended_reason = Membership.Status.ACTIVE, None, ""
    membership.full_clean()
    membership.save()
    access.membership_groups_sync(membership=membership)
    return membership


@transaction.atomic
def membership_change_role(*, actor: Any, membership: Membership, role: str) -> Membership:
    """Change a member's role (`tenants.manage_members`). Idempotent. Records MEMBER_ROLE_CHANGED."""
    access.require(actor, "tenants.manage_members", membership, visible_perm="tenants.view_members")
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if not membership.is_current():
        raise ValidationError({"role": "This membership has ended."})
    if membership.user_id == getattr(actor, "pk", None) and role != Role.TENANT_ADMIN:
        raise ValidationError({"role": "You cannot remove your own administrator role."})
    role_and_end_validate(role, membership.ends_at)
    if membership.role == role:
        return membership
    old = membership.role
    membership.role = role
    membership.full_clean()
    membership.save(update_fields=["role", "updated_at"])
    access.membership_groups_sync(membership=membership)
    audit_event_record(
        event=EventType.MEMBER_ROLE_CHANGED,
        actor=actor,
        target=membership,
        participants=[participant(membership.user, role="member")],
        extra={"from": old, "to": role},
    )
    return membership


@transaction.atomic
def membership_set_end(*, actor: Any, membership: Membership, ends_at: datetime | None) -> Membership:
    """Set or clear when a membership ends (`tenants.manage_members`). Records MEMBER_END_DATE_SET.

    The periodic job `tenant_memberships_end_due` ends it when the date comes.
    """
    access.require(actor, "tenants.manage_members", membership, visible_perm="tenants.view_members")
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if not membership.is_current():
        raise ValidationError({"ends_at": "This membership has ended."})
    role_and_end_validate(membership.role, ends_at)
    if membership.ends_at == ends_at:
        return membership
    membership.ends_at = ends_at
    membership.full_clean()
    membership.save(update_fields=["ends_at", "updated_at"])
    audit_event_record(
        event=EventType.MEMBER_END_DATE_SET,
        actor=actor,
        target=membership,
        participants=[participant(membership.user, role="member")],
        extra={"ends_at": ends_at.isoformat() if ends_at else None},
    )
    return membership


# What other apps must do, in the same transaction, when a membership ends (devices: order wipes of the devices
# in the person's custody, revoke their device tokens). Registered in the apps' AppConfig.ready.
MembershipEndHook = Callable[..., Any]
_membership_end_hooks: list[MembershipEndHook] = []


def membership_end_hook_register(hook: MembershipEndHook) -> None:
    """`hook(tenant=, user=, actor=)` runs inside `membership_end`'s transaction, in the tenant's scope."""
    if hook not in _membership_end_hooks:
        _membership_end_hooks.append(hook)


@transaction.atomic
def membership_end(
    *, actor: Any, membership: Membership, reason: str, system_principal: str = "enclave:membership-expiry"
) -> Membership:
    """End a membership now: the member's access to this tenant (pages, API, DICOMweb) ends with this commit, as
    every request checks the membership, and their API tokens of this tenant are revoked. Their other tenants are
    left alone, with their browser sessions there. Only when the account has no other current membership is it
    deactivated and every session of it ended.

    `actor` None means the system (the end-date job); a person needs `tenants.manage_members`. Idempotent.
    Records MEMBERSHIP_ENDED.
    """
    if actor is not None:
        access.require(actor, "tenants.manage_members", membership, visible_perm="tenants.view_members")
        if membership.user_id == actor.pk:
            raise ValidationError({"membership": "You cannot end your own membership."})
    membership = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    if membership.status == Membership.Status.ENDED:
        return membership
    now = timezone.now()
    membership.status, membership.ended_at, membership.ended_reason = Membership.Status.ENDED, now, reason[:200]
    membership.save(update_fields=["status", "ended_at", "ended_reason", "updated_at"])
    access.membership_groups_sync(membership=membership)
    revoked = tokens_revoke(ApiToken.objects.filter(user=membership.user), at=now)  # scoped: this tenant's
    for hook in _membership_end_hooks:
        hook(tenant=membership.tenant, user=membership.user, actor=actor)
    user = membership.user
    deactivated = False
    sessions = 0
    others = selectors.membership_list_across_tenants(user=user).exclude(pk=membership.pk)
    if user.is_active and not any(m.is_current(now) for m in others):
        user.is_active = False
        user.save(update_fields=["is_active"])
        deactivated = True
        sessions = sessions_end_for_user(user=user)
    audit_event_record(
        event=EventType.MEMBERSHIP_ENDED,
        actor=actor,
        target=membership,
        participants=[participant(user, role="member")],
        system_principal="" if actor is not None else system_principal,
        extra={"reason": reason, "tokens_revoked": revoked, "sessions_ended": sessions, "deactivated": deactivated},
    )
    return membership


def memberships_end_due(*, at: datetime | None = None) -> int:
    """End every membership of the current tenant whose end date has passed. System job; idempotent."""
    at = at or timezone.now()
    due = Membership.objects.filter(status=Membership.Status.ACTIVE, ends_at__lte=at).values_list("pk", flat=True)
    ended = 0
    for pk in list(due):
        membership = Membership.objects.get(pk=pk)
        membership_end(actor=None, membership=membership, reason="end date reached")
        ended += 1
    return ended


@transaction.atomic
def user_deactivate(*, user: User, reason: str, operator: Any = None) -> User:
    """Platform operators only: deactivate an account everywhere (HIPAA 164.308(a)(3)(ii)(C)).

    Ends every membership (each with its audit event in its tenant), every session and every token in this one
    request; it does not wait for any queue. Idempotent.
    """
    for membership in selectors.membership_list_across_tenants(user=user):
        with tenant_scope(membership.tenant):
            membership_end(
                actor=None, membership=membership, reason=reason, system_principal="enclave:operator-deactivation"
            )
    if user.is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    revoked = 0
    for token in selectors.api_token_list_across_tenants(user=user):
        with tenant_scope(token.tenant):
            revoked += tokens_revoke(ApiToken.objects.filter(pk=token.pk), at=timezone.now())
    sessions = sessions_end_for_user(user=user)
    audit_event_record(
        event=EventType.USER_DEACTIVATED,
        actor=operator,
        tenant=None,
        participants=[participant(user, role="deactivated")],
        extra={"reason": reason, "tokens_revoked": revoked, "sessions_ended": sessions},
    )
    return user


@transaction.atomic
def membership_grant_by_operator(
    *, tenant: Tenant, user: User, role: str, ends_at: datetime | None = None, operator: Any = None, reason: str
) -> Membership:
    """Platform work: give `user` a role in `tenant` without a tenant admin (a new tenant's first admin, the
    demo). Idempotent for the same role. Records MEMBER_ADDED with the operator or the system as actor."""
    role_and_end_validate(role, ends_at)
    with tenant_scope(tenant):
        existing = Membership.objects.filter(user=user).first()
        if existing is not None and existing.is_current() and existing.role == role:
            return existing
        membership = membership_open(tenant=tenant, user=user, role=role, ends_at=ends_at)
        audit_event_record(
            event=EventType.MEMBER_ADDED,
            actor=operator,
            target=membership,
            participants=[participant(user, role="member")],
            system_principal="" if operator is not None else "enclave:platform",
            extra={"role": role, "reason": reason, "by_operator": True},
        )
    return membership


@transaction.atomic
def account_unlock(*, actor: Any, membership: Membership) -> int:
    """Lift the sign-in lockout of a current member (`tenants.manage_members`), as the lockout page promises:
    the failed attempts django-axes counts for their user name (from every address) and the wait their
    authenticator imposes after wrong codes. Returns how many lockout records were cleared. Records
    ACCOUNT_UNLOCKED, also when nothing was locked (the administrator acted)."""
    access.require(actor, "tenants.manage_members", membership, visible_perm="tenants.view_members")
    if not membership.is_current():
        raise ValidationError({"membership": "This membership has ended."})
    user = membership.user
    cleared = axes_reset(username=user.get_username().strip().lower())
    for device in TOTPDevice.objects.filter(user=user, confirmed=True):
        device.throttle_reset(commit=True)
    audit_event_record(
        event=EventType.ACCOUNT_UNLOCKED,
        actor=actor,
        target=membership,
        participants=[participant(user, role="unlocked")],
        extra={"attempts_cleared": cleared},
    )
    return cleared
