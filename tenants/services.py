"""Writes about tenants, members, sessions and API tokens. Each writes its audit event in its transaction."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.contrib.sessions.backends.db import SessionStore
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from audit.events import EventType
from audit.services import audit_chain_create, audit_event_record, participant
from tenants import access, selectors
from tenants.models import ApiToken, Membership, Role, Tenant, User, UserSession
from tenants.scoping import tenant_scope

API_TOKEN_PREFIX = "enc_"  # noqa: S105 -- a marker for secret scanners, not a secret


# Tenants
# ------------------------------------------------------------------------------


@transaction.atomic
def tenant_create(*, slug: str, name: str, ae_title: str | None = None) -> Tenant:
    """Create a tenant with its role groups and its audit chain. Platform work: no tenant actor.

    `ae_title` is the called AE title DICOM peers use to reach this tenant's archive.
    Idempotent by slug: an existing tenant is returned unchanged (its groups are re-checked).
    """
    tenant = Tenant.objects.filter(slug=slug).first()
    created = tenant is None
    if tenant is None:
        tenant = Tenant(slug=slug, name=name, ae_title=ae_title.upper() if ae_title else None)
        tenant.full_clean()
        tenant.save()
    elif ae_title and not tenant.ae_title:
        # A tenant made before it had an AE title (an older demo database) gets the one now asked for.
        tenant.ae_title = ae_title.upper()
        tenant.full_clean()
        tenant.save(update_fields=["ae_title", "updated_at"])
    access.role_groups_install(tenant=tenant)
    audit_chain_create(tenant=tenant)
    if created:
        audit_event_record(event=EventType.TENANT_CREATED, tenant=tenant, target=tenant)
    return tenant


# Members
# ------------------------------------------------------------------------------


def _validate_role_and_end(role: str, ends_at: datetime | None) -> None:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if role == Role.AUDITOR and ends_at is None:
        raise ValidationError({"ends_at": "An auditor's membership must have an end date."})
    if ends_at is not None and ends_at <= timezone.now():
        raise ValidationError({"ends_at": "The end date must be in the future."})


def _invite(*, user: User, tenant: Tenant) -> None:
    """Email a new user a link to choose their own password: admins never set or see it."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    path = reverse("accounts:set_password", kwargs={"uidb64": uid, "token": token})
    send_mail(
        subject=f"You have been added to {tenant.name} on Enclave",
        message=(
            f"Hello {user.get_full_name() or user.username},\n\n"
            f"An administrator of {tenant.name} created an Enclave account for you (user name: {user.username}).\n"
            f"Choose your password here: {settings.PORTAL_BASE_URL}{path}\n"
            "After that you will set up an authenticator app for two-factor sign-in.\n"
        ),
        from_email=None,
        recipient_list=[user.email],
    )


def _account_for_invitation(*, username: str, email: str, first_name: str, last_name: str) -> User:
    """A new account with no usable password: its owner chooses one from the invitation email."""
    user = User(username=username, email=email, first_name=first_name, last_name=last_name)
    user.set_unusable_password()
    user.full_clean()
    user.save()
    return user


def _membership_open(*, tenant: Tenant, user: User, role: str, ends_at: datetime | None) -> Membership:
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
def membership_add(
    *,
    actor: Any,
    tenant: Tenant,
    username: str,
    role: str,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
    ends_at: datetime | None = None,
) -> Membership:
    """Add a person to the current tenant (`tenants.manage_members`).

    A new user name creates the account (no usable password; an invitation email lets the person choose one).
    An existing user joins with this role; a former member is reinstated. Adding a current member again is a
    validation error. Records MEMBER_ADDED.
    """
    access.require(actor, "tenants.manage_members", tenant, visible_perm="tenants.view_members")
    _validate_role_and_end(role, ends_at)
    user = User.objects.filter(username__iexact=username).first()
    new_user = user is None
    if user is None:
        if not email:
            raise ValidationError({"email": "A new user needs an email address for the invitation."})
        user = _account_for_invitation(username=username, email=email, first_name=first_name, last_name=last_name)
    elif not user.is_active:
        raise ValidationError({"username": "This account is deactivated."})
    existing = Membership.objects.filter(user=user).first()
    if existing is not None and existing.is_current():
        raise ValidationError({"username": "This person is already a member."})
    membership = _membership_open(tenant=tenant, user=user, role=role, ends_at=ends_at)
    audit_event_record(
        event=EventType.MEMBER_ADDED,
        actor=actor,
        target=membership,
        participants=[participant(user, role="member")],
        extra={"role": role, "ends_at": ends_at.isoformat() if ends_at else None, "new_account": new_user},
    )
    if new_user:
        transaction.on_commit(lambda: _invite(user=user, tenant=tenant))
    return membership


def _invite_for_share(*, user: User, tenant: Tenant, link: str, new_user: bool) -> None:
    """Email an outside physician the shared study's link (and, for a new account, the set-password link). The
    link opens only after sign-in with password and TOTP; the email names no patient."""
    lines = [
        f"Hello {user.get_full_name() or user.username},\n",
        f"A clinician of {tenant.name} shared a study with you.",
    ]
    if new_user:
        uid = urlsafe_base64_encode(force_bytes(user.pk))
        token = default_token_generator.make_token(user)
        path = reverse("accounts:set_password", kwargs={"uidb64": uid, "token": token})
        lines.append(
            f"First choose your password (user name: {user.username}): {settings.PORTAL_BASE_URL}{path}\n"
            "then set up an authenticator app for two-factor sign-in."
        )
    lines.append(f"The study, after you sign in: {link}")
    send_mail(
        subject=f"A study was shared with you on Enclave ({tenant.name})",
        message="\n".join(lines) + "\n",
        from_email=None,
        recipient_list=[user.email],
    )


@transaction.atomic
def membership_add_for_share(
    *, actor: Any, tenant: Tenant, email: str, first_name: str, last_name: str, ends_at: datetime, link: str
) -> Membership:
    """The narrow path by which a clinician who shares a study (`tenants.share_studies`, not manage_members)
    brings in an outside referring physician: a referring-physician membership ending at `ends_at` (when the
    share ends), made for a new account (user name = the email address) or an existing one that has no current
    membership here. The invitation email carries `link` (the study, behind sign-in and MFA). A current member
    is refused: share with them directly. Records MEMBER_ADDED."""
    access.require(actor, "tenants.share_studies", tenant)
    email = (email or "").strip().lower()
    if not email:
        raise ValidationError({"email": "Give the physician's email address."})
    _validate_role_and_end(Role.REFERRING_PHYSICIAN, ends_at)
    user = User.objects.filter(username__iexact=email).first() or User.objects.filter(email__iexact=email).first()
    new_user = user is None
    if user is None:
        user = _account_for_invitation(
            username=email, email=email, first_name=first_name.strip(), last_name=last_name.strip()
        )
    elif not user.is_active:
        # Deactivated by an operator or when their last membership ended: only an administrator may bring them back.
        raise ValidationError({"email": "This account is deactivated: ask a tenant administrator to add them."})
    existing = Membership.objects.filter(user=user).first()
    if existing is not None and existing.is_current():
        raise ValidationError({"email": "This person is already a member: share the study with them directly."})
    membership = _membership_open(tenant=tenant, user=user, role=Role.REFERRING_PHYSICIAN, ends_at=ends_at)
    audit_event_record(
        event=EventType.MEMBER_ADDED,
        actor=actor,
        target=membership,
        participants=[participant(user, role="member")],
        extra={
            "role": Role.REFERRING_PHYSICIAN,
            "ends_at": ends_at.isoformat(),
            "new_account": new_user,
            "via": "share",
        },
    )
    transaction.on_commit(lambda: _invite_for_share(user=user, tenant=tenant, link=link, new_user=new_user))
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
    _validate_role_and_end(role, membership.ends_at)
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
    _validate_role_and_end(membership.role, ends_at)
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


@transaction.atomic
def membership_end(
    *, actor: Any, membership: Membership, reason: str, system_principal: str = "enclave:membership-expiry"
) -> Membership:
    """End a membership now, with the user's sessions and this tenant's API tokens of that user.

    `actor` None means the system (the end-date job); a person needs `tenants.manage_members`. Idempotent.
    If the user has no other current membership, the account is deactivated too. Records MEMBERSHIP_ENDED.
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
    revoked = _tokens_revoke(ApiToken.objects.filter(user=membership.user), at=now)
    sessions = sessions_end_for_user(user=membership.user)
    user = membership.user
    deactivated = False
    others = selectors.membership_list_across_tenants(user=user).exclude(pk=membership.pk)
    if user.is_active and not any(m.is_current(now) for m in others):
        user.is_active = False
        user.save(update_fields=["is_active"])
        deactivated = True
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
            revoked += _tokens_revoke(ApiToken.objects.filter(pk=token.pk), at=timezone.now())
    sessions = sessions_end_for_user(user=user)
    audit_event_record(
        event=EventType.USER_DEACTIVATED,
        actor=operator,
        tenant=None,
        participants=[participant(user, role="deactivated")],
        extra={"reason": reason, "tokens_revoked": revoked, "sessions_ended": sessions},
    )
    return user


# Sessions
# ------------------------------------------------------------------------------


def session_register(*, user: User, session_key: str) -> None:
    """Remember that `session_key` belongs to `user` (called at sign-in)."""
    UserSession.objects.update_or_create(session_key=session_key, defaults={"user": user})


def sessions_end_for_user(*, user: User) -> int:
    """Delete every browser session of `user` from the session store. Returns how many were ended."""
    ended = 0
    for record in UserSession.objects.filter(user=user):
        store = SessionStore(session_key=record.session_key)
        if store.exists(record.session_key):
            ended += 1
        store.delete(record.session_key)
        record.delete()
    return ended


# API tokens
# ------------------------------------------------------------------------------


def _tokens_revoke(qs: Any, *, at: datetime) -> int:
    count = 0
    for token in qs.filter(revoked_at__isnull=True):
        token.revoked_at = at
        token.save(update_fields=["revoked_at", "updated_at"])
        count += 1
    return count


@transaction.atomic
def api_token_create(
    *, actor: User, tenant: Tenant, name: str, days: int | None = None, via_token: bool = False
) -> tuple[ApiToken, str]:
    """Create a bearer token for `actor` in the current tenant. Returns the row and the token, shown once.

    Needs a current membership (checked by the caller's base class or command). A caller authenticated by a token
    (`via_token`) is refused: otherwise a stolen token could renew itself past its expiry. Tokens are made after
    a sign-in with MFA, or by an operator's command. Records API_TOKEN_CREATED.
    """
    if via_token:
        raise access.Forbidden("API tokens are created from a signed-in browser session, not with a token.")
    days = settings.API_TOKEN_DEFAULT_DAYS if days is None else days
    if not 1 <= days <= settings.API_TOKEN_MAX_DAYS:
        raise ValidationError({"days": f"A token lives from 1 to {settings.API_TOKEN_MAX_DAYS} days."})
    if not name.strip():
        raise ValidationError({"name": "Give the token a name, such as what will use it."})
    raw = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        tenant=tenant,
        user=actor,
        name=name.strip(),
        prefix=raw[: len(API_TOKEN_PREFIX) + 6],
        digest=ApiToken.digest_of(raw),
        expires_at=timezone.now() + timedelta(days=days),
    )
    token.full_clean()
    token.save()
    audit_event_record(
        event=EventType.API_TOKEN_CREATED,
        actor=actor,
        target=token,
        extra={"expires_at": token.expires_at.isoformat(), "days": days},
    )
    return token, raw


@transaction.atomic
def api_token_revoke(*, actor: User, token: ApiToken) -> ApiToken:
    """Revoke a token: its owner may, and so may a member with `tenants.manage_members`. Idempotent."""
    if token.user_id != actor.pk:
        access.require(actor, "tenants.manage_members", token, visible_perm="tenants.manage_members")
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at", "updated_at"])
    audit_event_record(event=EventType.API_TOKEN_REVOKED, actor=actor, target=token)
    return token


def api_token_touch(*, token: ApiToken) -> None:
    """Note a token's use, at most once a minute so that busy integrations do not write on every call."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        with tenant_scope(token.tenant):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


@transaction.atomic
def membership_grant_by_operator(
    *, tenant: Tenant, user: User, role: str, ends_at: datetime | None = None, operator: Any = None, reason: str
) -> Membership:
    """Platform work: give `user` a role in `tenant` without a tenant admin (a new tenant's first admin, the
    demo). Idempotent for the same role. Records MEMBER_ADDED with the operator or the system as actor."""
    _validate_role_and_end(role, ends_at)
    with tenant_scope(tenant):
        existing = Membership.objects.filter(user=user).first()
        if existing is not None and existing.is_current() and existing.role == role:
            return existing
        membership = _membership_open(tenant=tenant, user=user, role=role, ends_at=ends_at)
        audit_event_record(
            event=EventType.MEMBER_ADDED,
            actor=operator,
            target=membership,
            participants=[participant(user, role="member")],
            system_principal="" if operator is not None else "enclave:platform",
            extra={"role": role, "reason": reason, "by_operator": True},
        )
    return membership
