"""Sharing one study with one person for a limited time: a StudyShare row (who, until when, revoked?) and a
django-guardian grant made through tenants.access. The visibility rule (studies.access_rules) honours the grant
only while its share is in force, so an expired or revoked share stops working at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record, participant
from studies.models import Study, StudyShare
from studies.selectors import share_in_force
from studies.services.reads import read_participants
from tenants import access
from tenants.access import membership_current_get
from tenants.models import User
from tenants.services import membership_add_for_share

VIEW_STUDY = "studies.view_study"


def study_participants(study: Study) -> list[dict[str, Any]]:
    """The patient and the study as ParticipantObjects of an audit event (DICOM PS3.15 A.5), by the one builder."""
    return read_participants(studies=[study])


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
    share = StudyShare(
        tenant=study.tenant, study=study, grantee=grantee, granted_by=actor, expires_at=expires_at, note=note.strip()
    )
    share.full_clean()
    share.save()
    access.object_grant(perm=VIEW_STUDY, user=grantee, obj=study)
    audit_event_record(
        event=EventType.STUDY_SHARED,
        actor=actor,
        target=share,
        participants=[*study_participants(study), participant(grantee, role="grantee")],
        extra={"expires_at": expires_at.isoformat(), "note": share.note},
    )
    return share


@transaction.atomic
def share_invite_outside(
    *, actor: Any, study: Study, email: str, first_name: str, last_name: str, days: int, note: str = ""
) -> StudyShare:
    """Share `study` with an outside referring physician for `days` days: a referring-physician membership
    ending when the share ends (tenants.services.membership_add_for_share; a new account gets a set-password
    link), an email with the study's link (sign-in with MFA still needed), then `share_create`. A person who
    is already a current member is refused there: share with them directly."""
    share_require(actor=actor, study=study)
    if not 1 <= days <= settings.SHARE_MAX_DAYS:
        raise ValidationError({"days": f"A share lasts from 1 to {settings.SHARE_MAX_DAYS} days."})
    if not first_name.strip() or not last_name.strip():
        raise ValidationError({"last_name": "Give the physician's first and last name."})
    expires_at = timezone.now() + timedelta(days=days)
    membership = membership_add_for_share(
        actor=actor,
        tenant=study.tenant,
        email=email,
        first_name=first_name,
        last_name=last_name,
        ends_at=expires_at,
        link=study_link(study),
    )
    return share_create(actor=actor, study=study, grantee=membership.user, expires_at=expires_at, note=note)


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
