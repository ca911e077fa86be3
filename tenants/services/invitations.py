"""Invitations: how a tenant administrator brings a person in. The administrator names an e-mail address and a
role; the person accepts with the link sent there, signed in with their existing account (password and TOTP) or
by creating one. No account joins a tenant without accepting.

The answer to the administrator is the same whether or not an account with that address exists, and names no
account: nothing is looked up by the address until the person accepts. The link's token is 256 random bits,
stored as a SHA-256 digest, single use, and expires after INVITATION_DAYS.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record, participant
from tenants import access
from tenants.models import Invitation, Membership, Tenant, User
from tenants.scoping import tenant_scope
from tenants.services.links import invitation_link
from tenants.services.mail import mail_queue
from tenants.services.memberships import membership_open, role_and_end_validate

INVITATION_TOKEN_PREFIX = "inv_"  # noqa: S105 -- a marker for secret scanners, not a secret


def invitation_days() -> int:
    return int(getattr(settings, "INVITATION_DAYS", 7))


def _invitation_mail(*, invitation: Invitation, tenant: Tenant, raw: str) -> None:
    name = " ".join(filter(None, [invitation.first_name, invitation.last_name])) or "Hello"
    mail_queue(
        subject=f"You are invited to join {tenant.name} on Enclave",
        body=(
            f"{name},\n\n"
            f"An administrator of {tenant.name} invites you to join it on Enclave as "
            f"{invitation.get_role_display().lower()}.\n"
            f"Accept here, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC: {invitation_link(raw_token=raw)}\n"
            "If you already have an Enclave account, sign in with it to accept; otherwise you will choose a user "
            "name and password, then set up an authenticator app for two-factor sign-in.\n"
            "If you did not expect this, ignore this message: nothing happens unless you accept.\n"
        ),
        to=[invitation.email],
    )


@transaction.atomic
def invitation_create(
    *,
    actor: Any,
    tenant: Tenant,
    email: str,
    role: str,
    first_name: str = "",
    last_name: str = "",
    ends_at: datetime | None = None,
) -> Invitation:
    """Invite `email` to the current tenant as `role` (`tenants.manage_members`). A pending invitation of the
    same address here is withdrawn and replaced (the newest link is the one that works). The e-mail is queued
    after the commit. Records INVITATION_SENT (the address as participant, never an account)."""
    access.require(actor, "tenants.manage_members", tenant, visible_perm="tenants.view_members")
    email = (email or "").strip().lower()
    if not email:
        raise ValidationError({"email": "Give the person's e-mail address: the invitation is sent there."})
    try:
        validate_email(email)
    except ValidationError as exc:
        raise ValidationError({"email": "Enter a valid e-mail address."}) from exc
    role_and_end_validate(role, ends_at)
    now = timezone.now()
    replaced = Invitation.objects.filter(email=email, accepted_at__isnull=True, revoked_at__isnull=True)
    # Saved one by one (not QuerySet.update) so that django-auditlog records each withdrawal.
    replaced_count = 0
    for old in replaced.select_for_update():
        old.revoked_at = now
        old.save(update_fields=["revoked_at", "updated_at"])
        replaced_count += 1
    raw = INVITATION_TOKEN_PREFIX + secrets.token_urlsafe(32)
    invitation = Invitation(
        tenant=tenant,
        email=email,
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        role=role,
        ends_at=ends_at,
        invited_by=actor if isinstance(actor, User) else None,
        digest=Invitation.digest_of(raw),
        expires_at=now + timedelta(days=invitation_days()),
    )
    invitation.full_clean()
    invitation.save()
    audit_event_record(
        event=EventType.INVITATION_SENT,
        actor=actor,
        target=invitation,
        participants=[{"type": "email", "id": email, "role": "invitee"}],
        extra={
            "role": role,
            "ends_at": ends_at.isoformat() if ends_at else None,
            "expires_at": invitation.expires_at.isoformat(),
            "replaced": replaced_count,
        },
    )
    _invitation_mail(invitation=invitation, tenant=tenant, raw=raw)
    return invitation


@transaction.atomic
def invitation_revoke(*, actor: Any, invitation: Invitation) -> Invitation:
    """Withdraw a pending invitation (`tenants.manage_members`): its link stops working. Idempotent; an
    accepted one cannot be withdrawn (end the membership instead). Records INVITATION_REVOKED."""
    access.require(actor, "tenants.manage_members", invitation, visible_perm="tenants.view_members")
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.accepted_at is not None:
        raise ValidationError({"invitation": "This invitation was accepted: end the membership instead."})
    if invitation.revoked_at is not None:
        return invitation
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at", "updated_at"])
    audit_event_record(
        event=EventType.INVITATION_REVOKED,
        actor=actor,
        target=invitation,
        participants=[{"type": "email", "id": invitation.email, "role": "invitee"}],
    )
    return invitation


INVITATION_INVALID = "This invitation link is not valid: it was used, withdrawn or has expired. Ask for a new one."


def _claim(*, invitation_id: int) -> Invitation:
    """The invitation, locked, if it is still open; else a ValidationError. Its tenant's scope must be open."""
    invitation = Invitation.objects.select_for_update().select_related("tenant").get(pk=invitation_id)
    if not invitation.is_open() or not invitation.tenant.is_active:
        raise ValidationError(INVITATION_INVALID)
    return invitation


def _accept(*, invitation: Invitation, user: User, new_account: bool) -> Membership:
    existing = Membership.objects.filter(user=user).first()
    if existing is not None and existing.is_current():
        raise ValidationError(f"You are already a member of {invitation.tenant.name}.")
    membership = membership_open(tenant=invitation.tenant, user=user, role=invitation.role, ends_at=invitation.ends_at)
    invitation.accepted_at, invitation.accepted_by = timezone.now(), user
    invitation.save(update_fields=["accepted_at", "accepted_by", "updated_at"])
    audit_event_record(
        event=EventType.INVITATION_ACCEPTED,
        actor=user,
        target=membership,
        participants=[participant(invitation), participant(user, role="member")],
        extra={"role": invitation.role, "new_account": new_account, "invited_by_id": invitation.invited_by_id},
    )
    return membership


def invitation_accept(*, user: User, invitation: Invitation) -> Membership:
    """`user`, signed in with password and TOTP, accepts `invitation` (found by its token): a membership in its
    tenant with its role and end date (a former membership is reinstated). Single use: a second accept, an
    expired or withdrawn invitation, or a current member is a ValidationError. Records INVITATION_ACCEPTED in
    the invitation's tenant, with the person as actor."""
    if not user.is_active:
        raise ValidationError(INVITATION_INVALID)
    with tenant_scope(invitation.tenant), transaction.atomic():
        claimed = _claim(invitation_id=invitation.pk)
        return _accept(invitation=claimed, user=user, new_account=False)


def invitation_accept_new_account(*, invitation: Invitation, username: str, password: str) -> Membership:
    """A person without an account accepts `invitation`: an account with `username`, `password` (the password
    validators apply) and the invitation's address and name, then the membership. The person then signs in and
    enrols an authenticator as at any first sign-in. Records INVITATION_ACCEPTED."""
    username = (username or "").strip()
    with tenant_scope(invitation.tenant), transaction.atomic():
        claimed = _claim(invitation_id=invitation.pk)
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError({"username": "This user name is taken: choose another."})
        user = User(username=username, email=claimed.email, first_name=claimed.first_name, last_name=claimed.last_name)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise ValidationError({"password": exc.messages}) from exc
        user.set_password(password)
        user.full_clean()
        user.save()
        return _accept(invitation=claimed, user=user, new_account=True)
