"""Reads about who else may open a study: its shares, break-glass grants and the compliance officers' review
queue. Every read goes through the permission decision and the tenant scope."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from studies.models import BreakGlassGrant, ShareInvitation, Study, StudyShare
from tenants import access
from tenants.models import Membership, User
from tenants.scoping import current_tenant


def share_list(*, actor: Any, study: Study) -> models.QuerySet[StudyShare]:
    """The shares of `study`, newest first, for a member who sees the study and may share
    (`tenants.share_studies`); NotVisible / Forbidden otherwise."""
    access.require(actor, "tenants.share_studies", study, visible_perm="studies.view_study")
    if not access.has_perm(actor, "studies.view_study", study):
        raise access.NotVisible()
    return StudyShare.objects.filter(study=study).select_related("grantee", "granted_by", "revoked_by")


def share_invitation_pending_list(*, actor: Any, study: Study) -> models.QuerySet[ShareInvitation]:
    """The shares of `study` offered to outside physicians and not accepted yet (invitation still open), for the
    same members as `share_list`."""
    share_list(actor=actor, study=study)
    now = timezone.now()
    return ShareInvitation.objects.filter(
        study=study,
        share__isnull=True,
        invitation__accepted_at__isnull=True,
        invitation__revoked_at__isnull=True,
        invitation__expires_at__gt=now,
    ).select_related("invitation", "granted_by")


def share_invitation_pending_get(*, actor: Any, study: Study, public_id: UUID | str) -> ShareInvitation:
    try:
        return share_invitation_pending_list(actor=actor, study=study).get(public_id=public_id)
    except (ShareInvitation.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def share_get(*, actor: Any, study: Study, public_id: UUID | str) -> StudyShare:
    try:
        return share_list(actor=actor, study=study).get(public_id=public_id)
    except (StudyShare.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def share_in_force(*, study: Study, grantee: Any) -> StudyShare | None:
    """The share of `study` with `grantee` still in force (not expired, not revoked), or None. No actor: for
    services deciding whether a grant must stay."""
    return (
        StudyShare.objects.filter(study=study, grantee=grantee, revoked_at__isnull=True, expires_at__gt=timezone.now())
        .order_by("-expires_at")
        .first()
    )


def share_grantee_candidates(*, actor: Any) -> models.QuerySet[User]:
    """The current members of the tenant (any role) a study could be shared with: everyone but `actor`."""
    now = timezone.now()
    member_ids = (
        Membership.objects.filter(status=Membership.Status.ACTIVE)
        .filter(models.Q(ends_at__isnull=True) | models.Q(ends_at__gt=now))
        .values("user_id")
    )
    return User.objects.filter(pk__in=member_ids, is_active=True).exclude(pk=actor.pk).order_by("username")


def break_glass_study_find(*, identifier: str) -> Study:
    """The study a clinician names for break-glass, by Study Instance UID or accession number, in the current
    tenant, WITHOUT the visibility filter: break-glass is for studies the clinician cannot see. Only
    `break_glass_start` calls this, after the reason and a fresh TOTP code are checked, so it is no free oracle.
    ValidationError when none or several match."""
    identifier = (identifier or "").strip()
    if not identifier:
        raise ValidationError({"identifier": "Type the study's accession number or Study Instance UID."})
    matches = list(
        Study.objects.filter(
            models.Q(study_instance_uid=identifier) | models.Q(accession_number__iexact=identifier)
        ).select_related("patient")[:2]
    )
    if not matches:
        raise ValidationError({"identifier": "No study of this tenant has this accession number or UID."})
    if len(matches) > 1:
        raise ValidationError(
            {"identifier": "Several studies have this accession number: type the Study Instance UID."}
        )
    return matches[0]


def break_glass_grant_list_for_user(*, actor: Any) -> models.QuerySet[BreakGlassGrant]:
    """`actor`'s own break-glass grants in the current tenant, newest first."""
    return BreakGlassGrant.objects.filter(user=actor).select_related("study", "study__patient")


def break_glass_grant_get_for_user(*, actor: Any, public_id: UUID | str) -> BreakGlassGrant:
    try:
        return break_glass_grant_list_for_user(actor=actor).get(public_id=public_id)
    except (BreakGlassGrant.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def break_glass_review_list(*, actor: Any, pending: bool = True) -> models.QuerySet[BreakGlassGrant]:
    """The review queue (`tenants.review_break_glass`, compliance officers): grants waiting for sign-off, oldest
    first; with `pending=False` the signed-off ones, newest first. Forbidden for anyone else."""
    access.require(actor, "tenants.review_break_glass", current_tenant())
    qs = BreakGlassGrant.objects.select_related("study", "study__patient", "user", "reviewed_by")
    if pending:
        return qs.filter(review=BreakGlassGrant.Review.PENDING).order_by("created_at", "pk")
    return qs.exclude(review=BreakGlassGrant.Review.PENDING).order_by("-reviewed_at", "-pk")


def break_glass_review_get(*, actor: Any, public_id: UUID | str) -> BreakGlassGrant:
    access.require(actor, "tenants.review_break_glass", current_tenant())
    try:
        return BreakGlassGrant.objects.select_related("study", "user").get(public_id=public_id)
    except (BreakGlassGrant.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc
