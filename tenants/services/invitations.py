"""Invitations: how a tenant administrator brings a person in. The administrator names an e-mail address and a
role; the person accepts with the link sent there, signed in with their existing account (password and TOTP) or
by creating one. No account joins a tenant without accepting.

A clinician who shares a study with an outside physician sends the same kind of invitation
(`invitation_create_for_share`, purpose "share"): a referring-physician membership that ends with the share, opened
only when the person accepts; the app that owns the share registers what acceptance then does
(`invitation_accepted_register`), in the same transaction.

The answer to the sender is the same whether or not an account with that address exists, and names no
account: nothing is looked up by the address until the person accepts. The link's token is 256 random bits,
stored as a SHA-256 digest, single use, and expires after INVITATION_DAYS.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
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
from tenants.models import Invitation, Membership, Role, Tenant, User
from tenants.scoping import tenant_scope
from tenants.services.links import invitation_link
from tenants.services.mail import mail_queue
from tenants.services.memberships import membership_open, role_and_end_validate

INVITATION_TOKEN_PREFIX = "inv_"  # noqa: S105 -- a marker for secret scanners, not a secret


def invitation_days() -> int:
    return int(getattr(settings, "INVITATION_DAYS", 7))


# What acceptance does beyond the membership, per purpose, registered by the app that owns it in AppConfig.ready()
# (studies: the share an invitation carries). Called inside the accepting transaction and tenant scope; a
# ValidationError there undoes the acceptance.
InvitationAccepted = Callable[..., None]
_accepted_hooks: dict[str, list[InvitationAccepted]] = {}


def invitation_accepted_register(purpose: str, hook: InvitationAccepted) -> None:
    """Register `hook(invitation=..., user=...)`, run when an invitation of `purpose` is accepted."""
    hooks = _accepted_hooks.setdefault(purpose, [])
    if hook not in hooks:
        hooks.append(hook)


def _email_validated(email: str) -> str:
    email = (email or "").strip().lower()
    if not email:
        raise ValidationError({"email": "Give the person's e-mail address: the invitation is sent there."})
    try:
        validate_email(email)
    except ValidationError as exc:
        raise ValidationError({"email": "Enter a valid e-mail address."}) from exc
    return email


def _invitation_new(
    *,
    actor: Any,
    tenant: Tenant,
    email: str,
    role: str,
    first_name: str,
    last_name: str,
    ends_at: datetime | None,
    purpose: str,
    expires_at: datetime,
) -> tuple[Invitation, str]:
    raw = INVITATION_TOKEN_PREFIX + secrets.token_urlsafe(32)
    invitation = Invitation(
        tenant=tenant,
        email=email,
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        role=role,
        ends_at=ends_at,
        purpose=purpose,
        invited_by=actor if isinstance(actor, User) else None,
        digest=Invitation.digest_of(raw),
        expires_at=expires_at,
    )
    invitation.full_clean()
    invitation.save()
    return invitation, raw


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
    email = _email_validated(email)
    role_and_end_validate(role, ends_at)
    now = timezone.now()
    replaced = Invitation.objects.filter(
        email=email, purpose=Invitation.Purpose.MEMBER, accepted_at__isnull=True, revoked_at__isnull=True
    )
    # Saved one by one (not QuerySet.update) so that django-auditlog records each withdrawal.
    replaced_count = 0
    for old in replaced.select_for_update():
        old.revoked_at = now
        old.save(update_fields=["revoked_at", "updated_at"])
        replaced_count += 1
    invitation, raw = _invitation_new(
        actor=actor,
        tenant=tenant,
        email=email,
        role=role,
        first_name=first_name,
        last_name=last_name,
        ends_at=ends_at,
        purpose=Invitation.Purpose.MEMBER,
        expires_at=now + timedelta(days=invitation_days()),
    )
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
def invitation_create_for_share(
    *,
    actor: Any,
    tenant: Tenant,
    email: str,
    first_name: str,
    last_name: str,
    ends_at: datetime,
    link: str,
    participants: list[dict[str, Any]] | None = None,
) -> Invitation:
    """The narrow path by which a clinician who shares a study (`tenants.share_studies`, not manage_members)
    invites an outside physician: an invitation as referring physician whose membership would end at `ends_at`
    (when the share ends), open until then or INVITATION_DAYS, whichever comes first. Nothing is looked up by the
    address: whether an account exists, is deactivated or already belongs here, the sender gets the same answer,
    and no account joins without accepting (`invitation_accept`). The caller binds what is shared to the
    invitation and registers what acceptance does. The e-mail carries the accept link and `link` (the study,
    behind sign-in and MFA), and names no patient. Records INVITATION_SENT (the address as participant, with the
    caller's `participants`: what is offered)."""
    access.require(actor, "tenants.share_studies", tenant)
    email = _email_validated(email)
    if not first_name.strip() or not last_name.strip():
        raise ValidationError({"last_name": "Give the physician's first and last name."})
    role_and_end_validate(Role.REFERRING_PHYSICIAN, ends_at)
    expires_at = min(timezone.now() + timedelta(days=invitation_days()), ends_at)
    invitation, raw = _invitation_new(
        actor=actor,
        tenant=tenant,
        email=email,
        role=Role.REFERRING_PHYSICIAN,
        first_name=first_name,
        last_name=last_name,
        ends_at=ends_at,
        purpose=Invitation.Purpose.SHARE,
        expires_at=expires_at,
    )
    audit_event_record(
        event=EventType.INVITATION_SENT,
        actor=actor,
        target=invitation,
        participants=[*(participants or []), {"type": "email", "id": email, "role": "invitee"}],
        extra={
            "role": Role.REFERRING_PHYSICIAN,
            "purpose": Invitation.Purpose.SHARE,
            "ends_at": ends_at.isoformat(),
            "expires_at": expires_at.isoformat(),
        },
    )
    mail_queue(
        subject=f"A study was shared with you on Enclave ({tenant.name})",
        body=(
            f"{invitation.first_name} {invitation.last_name},\n\n"
            f"A clinician of {tenant.name} shared a study with you on Enclave, until {ends_at:%Y-%m-%d %H:%M} UTC.\n"
            f"Accept here, until {expires_at:%Y-%m-%d %H:%M} UTC: {invitation_link(raw_token=raw)}\n"
            "If you already have an Enclave account, sign in with it to accept; otherwise you will choose a user "
            "name and password, then set up an authenticator app for two-factor sign-in.\n"
            f"Once you have accepted, the study opens here after you sign in: {link}\n"
            "If you did not expect this, ignore this message: nothing happens unless you accept.\n"
        ),
        to=[invitation.email],
    )
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


@transaction.atomic
def invitation_revoke_for_share(*, actor: Any, invitation: Invitation) -> Invitation:
    """Withdraw a pending share invitation (purpose "share") for a clinician who may share studies
    (`tenants.share_studies`; the caller checks the study): its link stops working. Idempotent; an accepted one
    cannot be withdrawn (revoke the share instead). Records INVITATION_REVOKED."""
    access.require(actor, "tenants.share_studies", invitation.tenant)
    if invitation.purpose != Invitation.Purpose.SHARE:
        raise access.NotVisible()
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.accepted_at is not None:
        raise ValidationError({"invitation": "This invitation was accepted: revoke the share instead."})
    if invitation.revoked_at is not None:
        return invitation
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at", "updated_at"])
    audit_event_record(
        event=EventType.INVITATION_REVOKED,
        actor=actor,
        target=invitation,
        participants=[{"type": "email", "id": invitation.email, "role": "invitee"}],
        extra={"purpose": Invitation.Purpose.SHARE},
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
        if invitation.purpose != Invitation.Purpose.SHARE:
            raise ValidationError(f"You are already a member of {invitation.tenant.name}.")
        # A share for a current member: the membership stays as it is, except that a referring physician's
        # membership made for an earlier share lasts as long as this one.
        membership = existing
        if (
            membership.role == Role.REFERRING_PHYSICIAN
            and membership.ends_at is not None
            and invitation.ends_at is not None
            and membership.ends_at < invitation.ends_at
        ):
            membership.ends_at = invitation.ends_at
            membership.save(update_fields=["ends_at", "updated_at"])
    else:
        membership = membership_open(
            tenant=invitation.tenant, user=user, role=invitation.role, ends_at=invitation.ends_at
        )
    invitation.accepted_at, invitation.accepted_by = timezone.now(), user
    invitation.save(update_fields=["accepted_at", "accepted_by", "updated_at"])
    audit_event_record(
        event=EventType.INVITATION_ACCEPTED,
        actor=user,
        target=membership,
        participants=[participant(invitation), participant(user, role="member")],
        extra={
            "role": membership.role,
            "purpose": invitation.purpose,
            "new_account": new_account,
            "invited_by_id": invitation.invited_by_id,
        },
    )
    for hook in _accepted_hooks.get(invitation.purpose, []):
        hook(invitation=invitation, user=user)
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
