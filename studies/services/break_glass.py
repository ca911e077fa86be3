"""Break-glass: emergency access to one study by a clinician without a grant (HIPAA 164.312(a)(2)(ii)).

A stated reason and a fresh TOTP code start it; it lasts BREAK_GLASS_HOURS (4 by default); starting it is a
Security Alert (110113, Emergency Override Started 110127) that opens a SecurityAlert and emails the tenant's
compliance officers; it ends by the user's hand or at expiry (110138, the periodic job); a compliance officer
signs it off in the review queue.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.services import audit_event_record, participant, security_alert_raise
from studies.models import BreakGlassGrant, Study
from studies.selectors import break_glass_study_find
from studies.services.reads import study_participants
from tenants import access
from tenants.mfa import mfa_step_up_check
from tenants.models import Tenant
from tenants.scoping import current_tenant
from tenants.selectors import compliance_officer_emails
from tenants.services import mail_queue

PURPOSE_OF_USE = "ETREAT"  # HL7 PurposeOfUse: emergency treatment
REASON_MAX = 500


def _grant_participants(grant: BreakGlassGrant) -> list[dict[str, Any]]:
    return [participant(grant.user, role="break-glass user"), *study_participants(grant.study)]


def _refusal_record(*, actor: Any, reason: str, study: Study | None, extra: dict[str, Any]) -> None:
    """A refused start is on the trail too (outcome 4), committed although the caller then raises."""
    audit_event_record(
        event=EventType.BREAK_GLASS_STARTED,
        actor=actor,
        participants=study_participants(study) if study is not None else [],
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=reason,
        extra={"purpose_of_use": PURPOSE_OF_USE, **extra},
    )


def _compliance_officers_email(*, tenant: Tenant, grant: BreakGlassGrant) -> None:
    """Tell the tenant's compliance officers. The email names the person and the time, never the patient: email
    is not a safe channel for patient data; the review queue shows the rest after sign-in."""
    recipients = compliance_officer_emails()
    if not recipients:
        return
    queue = f"{settings.PORTAL_BASE_URL}{reverse('portal:break_glass_review', kwargs={'tenant': tenant.slug})}"
    user = grant.user
    message = (
        f"{user.get_full_name() or user.username} ({user.username}) started emergency (break-glass) access to a "
        f"study of {tenant.name} at {grant.created_at:%Y-%m-%d %H:%M} UTC, until {grant.expires_at:%H:%M} UTC.\n\n"
        f"Review and sign it off here: {queue}\n"
    )
    mail_queue(subject=f"Break-glass access started in {tenant.name}", body=message, to=recipients)


def break_glass_start(
    *, actor: Any, reason: str, otp_token: str, study: Study | None = None, identifier: str = ""
) -> BreakGlassGrant:
    """Open `study` (or the study named by `identifier`, an accession number or Study Instance UID, typed by
    the clinician) to `actor` for BREAK_GLASS_HOURS, for emergency treatment.

    Only a current clinician (radiologist, technologist, referring physician) who cannot already see the study:
    others are Forbidden. An empty reason, a wrong or reused TOTP code, an unknown identifier or a study already
    visible is a ValidationError. The code is checked before the study is looked up, so each probe costs a fresh
    code and is recorded. Refusals record BREAK_GLASS_STARTED with outcome 4.
    On success: a BreakGlassGrant (purpose ETREAT), BREAK_GLASS_STARTED (110113 / 110127) naming the user, the
    study and the patient, a SecurityAlert (kind "break_glass"), and an email to the compliance officers after
    commit. Not idempotent: each start is its own grant and alert.
    """
    tenant = current_tenant()
    if study is not None and study.tenant_id != tenant.pk:
        raise access.NotVisible()
    access.break_glass_require(actor)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "State why you need emergency access to this study."})
    if len(reason) > REASON_MAX:
        raise ValidationError({"reason": f"Keep the reason under {REASON_MAX} characters."})
    if not mfa_step_up_check(user=actor, token=otp_token or "", purpose="break-glass"):
        _refusal_record(actor=actor, reason="wrong or reused TOTP code", study=study, extra={"step": "totp"})
        raise ValidationError({"otp_token": "This code is wrong or was used already. Wait for a new one."})
    if study is None:
        try:
            study = break_glass_study_find(identifier=identifier)
        except ValidationError:
            _refusal_record(actor=actor, reason="no single study matches", study=None, extra={"identifier": identifier})
            raise
    if not access.break_glass_needed(actor, study):
        raise ValidationError({"identifier": "You can already open this study: no emergency access is needed."})
    return _start(actor=actor, study=study, reason=reason)


@transaction.atomic
def _start(*, actor: Any, study: Study, reason: str) -> BreakGlassGrant:
    grant = BreakGlassGrant(
        tenant=study.tenant,
        study=study,
        user=actor,
        reason=reason,
        purpose_of_use=PURPOSE_OF_USE,
        expires_at=timezone.now() + timedelta(hours=settings.BREAK_GLASS_HOURS),
    )
    grant.full_clean()
    grant.save()
    security_alert_raise(
        kind="break_glass",
        summary=f"Emergency access started by {actor.username}",
        event=EventType.BREAK_GLASS_STARTED,
        severity="high",
        actor=actor,
        target=grant,
        participants=_grant_participants(grant),
        outcome=Outcome.SUCCESS,
        extra={
            "purpose_of_use": PURPOSE_OF_USE,
            "reason": reason,
            "expires_at": grant.expires_at.isoformat(),
        },
    )
    _compliance_officers_email(tenant=study.tenant, grant=grant)
    return grant


@transaction.atomic
def break_glass_end(*, actor: Any, grant: BreakGlassGrant) -> BreakGlassGrant:
    """End a grant now: by its user (`actor`), or by the system at expiry (`actor` None). Idempotent.
    Records BREAK_GLASS_ENDED (110113 / 110138) with the user, study and patient."""
    if actor is not None and grant.user_id != actor.pk:
        raise access.NotVisible()
    grant = (
        BreakGlassGrant.objects.select_for_update().select_related("study", "study__patient", "user").get(pk=grant.pk)
    )
    if grant.ended_at is not None:
        return grant
    now = timezone.now()
    expired = grant.expires_at <= now
    grant.ended_at = min(now, grant.expires_at)
    grant.save(update_fields=["ended_at", "updated_at"])
    audit_event_record(
        event=EventType.BREAK_GLASS_ENDED,
        actor=actor,
        target=grant,
        participants=_grant_participants(grant),
        system_principal="" if actor is not None else "enclave:break-glass-expiry",
        extra={"purpose_of_use": grant.purpose_of_use, "ended": "expired" if expired else "by the user"},
    )
    return grant


def break_glass_end_expired() -> int:
    """End every grant of the current tenant past its expiry (system job, idempotent): the access already
    stopped at `expires_at` (visibility rule); this records its end (110138). Returns how many it ended."""
    due = BreakGlassGrant.objects.filter(ended_at__isnull=True, expires_at__lte=timezone.now())
    ended = 0
    for grant in due:
        break_glass_end(actor=None, grant=grant)
        ended += 1
    return ended


@transaction.atomic
def break_glass_review(*, actor: Any, grant: BreakGlassGrant, verdict: str, note: str = "") -> BreakGlassGrant:
    """Sign off a grant (`tenants.review_break_glass`, compliance officers): `verdict` appropriate or
    inappropriate, a note required for inappropriate. Once only; nobody reviews their own grant.
    Records BREAK_GLASS_REVIEWED."""
    access.require(actor, "tenants.review_break_glass", grant)
    grant = (
        BreakGlassGrant.objects.select_for_update().select_related("study", "study__patient", "user").get(pk=grant.pk)
    )
    if verdict not in (BreakGlassGrant.Review.APPROPRIATE, BreakGlassGrant.Review.INAPPROPRIATE):
        raise ValidationError({"verdict": "Choose appropriate or inappropriate."})
    note = (note or "").strip()
    if verdict == BreakGlassGrant.Review.INAPPROPRIATE and not note:
        raise ValidationError({"note": "Say why the access was inappropriate."})
    if grant.user_id == actor.pk:
        raise ValidationError({"verdict": "Someone else must review your own emergency access."})
    if grant.review != BreakGlassGrant.Review.PENDING:
        raise ValidationError({"verdict": "This emergency access was reviewed already."})
    grant.review, grant.reviewed_by, grant.reviewed_at, grant.review_note = verdict, actor, timezone.now(), note[:500]
    grant.save(update_fields=["review", "reviewed_by", "reviewed_at", "review_note", "updated_at"])
    audit_event_record(
        event=EventType.BREAK_GLASS_REVIEWED,
        actor=actor,
        target=grant,
        participants=_grant_participants(grant),
        extra={"verdict": verdict, "note": grant.review_note},
    )
    return grant
