"""Sharing one study with one person for a limited time: a StudyShare row (who, until when, revoked?) and a
django-guardian grant made through tenants.access. The visibility rule (studies.access_rules) honours the grant
only while its share is in force, so an expired or revoked share stops working at once.

An outside physician is invited (tenants.services.invitation_create_for_share) with the share bound to the
invitation (ShareInvitation); nothing is granted, and no account joins the tenant, until the person accepts.
`share_invitation_accepted` (registered in StudiesConfig.ready) then makes the share, in the accepting
transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record, participant
from studies.models import ShareInvitation, Study, StudyShare
from studies.selectors import share_in_force
from studies.services.reads import study_participants
from tenants import access
from tenants.access import membership_current_get
from tenants.models import Invitation, User
from tenants.services import invitation_create_for_share, invitation_revoke_for_share

VIEW_STUDY = "studies.view_study"


def study_link(study: Study) -> str:
    """The study's page, absolute, for emails. It opens only after sign-in with password and TOTP."""
    return f"{settings.PORTAL_BASE_URL}/t/{study.tenant.slug}/studies/{study.public_id}/"


def share_require(*, actor: Any, study: Study) -> None:
    """Sharing needs the study to be visible to `actor` (else NotVisible, a 404) and `tenants.share_studies`
    (else Forbidden, a 403)."""
    if not access.has_perm(actor, VIEW_STUDY, study):
        raise access.NotVisible()
    access.require(actor, "tenants.share_studies", study)


def _validate_expiry(expires_at: datetime) -> None:
    now = timezone.now()
    if expires_at <= now:
        raise ValidationError({"expires_at": "A share must end in the future."})
    if expires_at > now + timedelta(days=settings.SHARE_MAX_DAYS, minutes=5):
        raise ValidationError({"expires_at": f"A share lasts at most {settings.SHARE_MAX_DAYS} days."})


@transaction.atomic
def share_create(*, actor: Any, study: Study, grantee: User, expires_at: datetime, note: str = "") -> StudyShare:
    """Share `study` with `grantee`, a current member of the tenant in a role that sees images
    (`access.may_see_images`: radiologist, technologist, referring physician; anyone else is refused with the
    reason), until `expires_at` (at most SHARE_MAX_DAYS). Needs `share_require`. A second share in force with the
    same person is refused (revoke it first). Records STUDY_SHARED with the patient, the study and the grantee."""
    share_require(actor=actor, study=study)
    if grantee.pk == actor.pk:
        raise ValidationError({"grantee": "You cannot share a study with yourself."})
    membership = membership_current_get(user=grantee, tenant=study.tenant)
    if membership is None:
        raise ValidationError({"grantee": "Only a current member of this tenant can receive a share."})
    if not access.may_see_images(grantee, study.tenant):
        raise ValidationError(
            {
                "grantee": f"The role of {grantee.username} ({membership.get_role_display().lower()}) sees no "
                "images: studies are shared only with radiologists, technologists and referring physicians."
            }
        )
    _validate_expiry(expires_at)
    if share_in_force(study=study, grantee=grantee) is not None:
        raise ValidationError({"grantee": "This study is already shared with this person."})
    return _share_open(actor=actor, study=study, grantee=grantee, granted_by=actor, expires_at=expires_at, note=note)


def _share_open(
    *,
    actor: Any,
    study: Study,
    grantee: User,
    granted_by: User,
    expires_at: datetime,
    note: str,
    extra: dict[str, Any] | None = None,
) -> StudyShare:
    share = StudyShare(
        tenant=study.tenant,
        study=study,
        grantee=grantee,
        granted_by=granted_by,
        expires_at=expires_at,
        note=note.strip(),
    )
    share.full_clean()
    share.save()
    access.object_grant(perm=VIEW_STUDY, user=grantee, obj=study)
    audit_event_record(
        event=EventType.STUDY_SHARED,
        actor=actor,
        target=share,
        participants=[*study_participants(study), participant(grantee, role="grantee")],
        extra={"expires_at": expires_at.isoformat(), "note": share.note, **(extra or {})},
    )
    return share


OUTSIDE_INVITED = (
    "An invitation to {email} is queued: the study is shared with them for {days} days once they accept it "
    "(signed in with their account and two-factor sign-in, or with a new one). Nothing is granted before."
)


@transaction.atomic
def share_invite_outside(
    *, actor: Any, study: Study, email: str, first_name: str, last_name: str, days: int, note: str = ""
) -> ShareInvitation:
    """Offer `study` to an outside referring physician for `days` days: an invitation to `email`
    (tenants.services.invitation_create_for_share: a referring-physician membership ending when the share ends,
    opened only when the person accepts) with the share bound to it. Needs `share_require`. Nothing is looked up
    by the address, so the answer (OUTSIDE_INVITED) is the same whether or not an account exists, and names
    none. Records INVITATION_SENT with the patient, the study and the address."""
    share_require(actor=actor, study=study)
    if not 1 <= days <= settings.SHARE_MAX_DAYS:
        raise ValidationError({"days": f"A share lasts from 1 to {settings.SHARE_MAX_DAYS} days."})
    if not first_name.strip() or not last_name.strip():
        raise ValidationError({"last_name": "Give the physician's first and last name."})
    expires_at = timezone.now() + timedelta(days=days)
    invitation = invitation_create_for_share(
        actor=actor,
        tenant=study.tenant,
        email=email,
        first_name=first_name,
        last_name=last_name,
        ends_at=expires_at,
        link=study_link(study),
        participants=study_participants(study),
    )
    pending = ShareInvitation(
        tenant=study.tenant,
        study=study,
        invitation=invitation,
        granted_by=actor,
        note=note.strip(),
        expires_at=expires_at,
    )
    pending.full_clean()
    pending.save()
    return pending


def share_invitation_withdraw(*, actor: Any, pending: ShareInvitation) -> ShareInvitation:
    """Withdraw a share offered to an outside physician before they accept it (`share_require`): the invitation's
    link stops working and nothing is ever granted. Idempotent. Records INVITATION_REVOKED."""
    share_require(actor=actor, study=pending.study)
    invitation_revoke_for_share(actor=actor, invitation=pending.invitation)
    return pending


def share_invitation_accepted(*, invitation: Invitation, user: User) -> None:
    """Acceptance of an invitation with purpose "share" (registered with tenants.services): the share bound to
    it is made for `user`, who now is a member, until the end the sharer chose. Runs in the accepting
    transaction and tenant scope; a refusal (the sharer may no longer share the study, the person's role sees no
    images) undoes the acceptance. Records STUDY_SHARED with the person as actor and the sharer named."""
    pending = (
        ShareInvitation.objects.select_for_update()
        .select_related("study", "study__patient", "study__tenant", "granted_by")
        .filter(invitation=invitation)
        .first()
    )
    if pending is None or pending.share_id is not None:
        return
    study, sharer = pending.study, pending.granted_by
    if pending.expires_at <= timezone.now():
        raise ValidationError("This share has already ended: ask for a new one.")
    if sharer.pk == user.pk:
        raise ValidationError("You cannot share a study with yourself.")
    if not (access.has_perm(sharer, VIEW_STUDY, study) and access.has_perm(sharer, "tenants.share_studies", study)):
        raise ValidationError("The person who shared this study may no longer share it: ask them again.")
    if not access.may_see_images(user, study.tenant):
        raise ValidationError(
            "Your role here sees no images: studies are shared only with radiologists, technologists and "
            "referring physicians."
        )
    share = share_in_force(study=study, grantee=user)
    if share is None or share.expires_at < pending.expires_at:
        share = _share_open(
            actor=user,
            study=study,
            grantee=user,
            granted_by=sharer,
            expires_at=pending.expires_at,
            note=pending.note,
            extra={"via": "invitation", "invitation": str(invitation.public_id)},
        )
    pending.share = share
    pending.save(update_fields=["share", "updated_at"])


@transaction.atomic
def share_revoke(*, actor: Any, share: StudyShare) -> StudyShare:
    """Revoke a share now. The sharer or anyone else who may share the study (`share_require`). Idempotent.
    The grant is removed unless another share of the study with the same person is still in force.
    Records SHARE_REVOKED."""
    share_require(actor=actor, study=share.study)
    share = StudyShare.objects.select_for_update().select_related("study", "study__patient", "grantee").get(pk=share.pk)
    if share.revoked_at is not None:
        return share
    share.revoked_at, share.revoked_by = timezone.now(), actor
    share.save(update_fields=["revoked_at", "revoked_by", "updated_at"])
    if share_in_force(study=share.study, grantee=share.grantee) is None:
        access.object_revoke(perm=VIEW_STUDY, user=share.grantee, obj=share.study)
    audit_event_record(
        event=EventType.SHARE_REVOKED,
        actor=actor,
        target=share,
        participants=[*study_participants(share.study), participant(share.grantee, role="grantee")],
        extra={"was_expiring_at": share.expires_at.isoformat()},
    )
    return share


def shares_expired_cleanup(*, window: timedelta | None = None) -> int:
    """Remove the guardian grants of shares of the current tenant that expired within `window` (default two
    days; the job runs hourly) and have no other share in force. Tidiness only: the visibility rule already
    ignores them. System job, idempotent. Returns how many grants it removed."""
    now = timezone.now()
    window = window or timedelta(days=2)
    expired = StudyShare.objects.filter(
        revoked_at__isnull=True, expires_at__lte=now, expires_at__gt=now - window
    ).select_related("study", "grantee")
    removed = 0
    for share in expired:
        if share_in_force(study=share.study, grantee=share.grantee) is None:
            access.object_revoke(perm=VIEW_STUDY, user=share.grantee, obj=share.study)
            removed += 1
    return removed
