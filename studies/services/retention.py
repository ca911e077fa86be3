"""Retention (issue 13): policies, legal holds, deletion proposals approved by two people, and deletion that
shreds.

- A policy keeps a study `years_after_last_study` after the patient's most recent study, and never before the
  patient reaches `keep_until_patient_age`; the longest keep of the active policies that match wins. A study
  without a study date, or whose patient's birth date is unknown when a policy keeps until an age, is never
  proposed: when in doubt, keep.
- The daily job (`retention_proposals_make`, per tenant) proposes each study past its keep and without a hold.
- Two different people with `tenants.manage_retention` (tenant administrators and compliance officers) approve:
  the first approval is recorded, the second, by someone else, deletes. Rejection, by either, needs a reason.
- A legal hold on a study or a patient stops proposals and deletion whatever the policies say; placing one
  cancels the open proposals it covers.
- Deletion removes the instances, series and study rows and the blobs, and destroys the study key (kept only as
  files in the blob stores, studies.storage.keys), so the ciphertext left anywhere cannot be decrypted even with
  a database backup taken before; the files leave the primary and the replica store after the commit. A
  tombstone keeps the UIDs, the dates, the policy and the two approvers; the audit trail has every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record
from studies.models import (
    BreakGlassGrant,
    IngestItem,
    Instance,
    LegalHold,
    Patient,
    RetentionPolicy,
    RetentionProposal,
    RetentionTombstone,
    Series,
    Study,
)
from studies.services.exports import exports_destroy_with_study
from studies.services.reads import read_tallies_close_for_study
from studies.services.shares import study_participants
from studies.storage.blobs import blob_delete, blob_quarantined_shred
from studies.storage.keys import study_key_destroy, study_key_get
from tenants import access
from tenants.scoping import current_tenant

MANAGE_RETENTION = "tenants.manage_retention"
REASON_MAX = 500


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a year that has none
        return day.replace(year=day.year + years, day=28)


@dataclass(frozen=True)
class Keep:
    policy: RetentionPolicy
    until: date


def _modalities(study: Study) -> set[str]:
    return {m for m in study.modalities.split("\\") if m}


def retention_keep(
    *, study: Study, policies: list[RetentionPolicy], last_study_date: date | None, birth_date: date | None
) -> Keep | None:
    """Until when `study` must be kept, and by which policy (the longest keep of the matching ones); None when
    no policy matches or the dates needed are unknown (then the study is kept)."""
    best: Keep | None = None
    modalities = _modalities(study)
    for policy in policies:
        if policy.modality and policy.modality not in modalities:
            continue
        if study.study_date is None or last_study_date is None:
            return None
        until = _add_years(max(last_study_date, study.study_date), policy.years_after_last_study)
        if policy.keep_until_patient_age is not None:
            if birth_date is None:
                return None
            until = max(until, _add_years(birth_date, policy.keep_until_patient_age))
        if best is None or until > best.until:
            best = Keep(policy=policy, until=until)
    return best


def _held_q() -> Q:
    """Studies under a hold that is not lifted (on the study itself or on its patient)."""
    holds = LegalHold.objects.filter(lifted_at__isnull=True)
    return Q(pk__in=holds.filter(study__isnull=False).values("study_id")) | Q(
        patient_id__in=holds.filter(patient__isnull=False).values("patient_id")
    )


def study_is_held(*, study: Study) -> bool:
    return Study.objects.filter(_held_q(), pk=study.pk).exists()


def _keep_for(study: Study, policies: list[RetentionPolicy]) -> Keep | None:
    last = Study.objects.filter(patient_id=study.patient_id).aggregate(last=Max("study_date"))["last"]
    return retention_keep(study=study, policies=policies, last_study_date=last, birth_date=study.patient.birth_date)


def retention_proposals_make(*, today: date | None = None) -> int:
    """The daily job, for the tenant in scope (a system job, no actor): propose every study past its keep, with
    no hold and no open proposal. Idempotent: a second run the same day proposes nothing new (the open-proposal
    unique constraint settles two runs racing). Returns how many proposals it made."""
    today = today or timezone.localdate()
    policies = list(RetentionPolicy.objects.filter(active=True))
    if not policies:
        return 0
    last_by_patient = dict(
        Study.objects.values("patient_id").annotate(last=Max("study_date")).values_list("patient_id", "last")
    )
    open_study_ids = RetentionProposal.objects.filter(status=RetentionProposal.Status.PROPOSED).values("study_id")
    candidates = (
        Study.objects.exclude(_held_q())
        .exclude(pk__in=open_study_ids)
        .filter(study_date__isnull=False)
        .select_related("patient")
        .order_by("pk")
    )
    made = 0
    for study in candidates.iterator(chunk_size=500):
        keep = retention_keep(
            study=study,
            policies=policies,
            last_study_date=last_by_patient.get(study.patient_id),
            birth_date=study.patient.birth_date,
        )
        if keep is None or keep.until > today:
            continue
        try:
            with transaction.atomic():
                proposal = RetentionProposal.objects.create(
                    tenant=study.tenant,
                    study=study,
                    study_instance_uid=study.study_instance_uid,
                    policy=keep.policy,
                    due_on=keep.until,
                )
                audit_event_record(
                    event=EventType.RETENTION_PROPOSED,
                    target=proposal,
                    participants=study_participants(study),
                    extra={"policy": str(keep.policy.public_id), "due_on": keep.until.isoformat()},
                )
        except IntegrityError:
            continue  # another run proposed it a moment ago
        made += 1
    return made


def _reason_clean(reason: str, *, required: bool) -> str:
    reason = (reason or "").strip()
    if required and not reason:
        raise ValidationError({"reason": "State the reason."})
    if len(reason) > REASON_MAX:
        raise ValidationError({"reason": f"At most {REASON_MAX} characters."})
    return reason


@transaction.atomic
def retention_policy_create(
    *,
    actor: Any,
    name: str,
    modality: str,
    years_after_last_study: int,
    keep_until_patient_age: int | None,
) -> RetentionPolicy:
    """Add a policy (`tenants.manage_retention`). Audited (RETENTION_POLICY_SET)."""
    tenant = current_tenant()
    access.require(actor, MANAGE_RETENTION, tenant)
    policy = RetentionPolicy(
        tenant=tenant,
        name=name.strip(),
        modality=modality.strip().upper(),
        years_after_last_study=years_after_last_study,
        keep_until_patient_age=keep_until_patient_age,
        created_by=actor,
    )
    policy.full_clean()
    policy.save()
    audit_event_record(
        event=EventType.RETENTION_POLICY_SET,
        actor=actor,
        target=policy,
        extra={
            "change": "created",
            "modality": policy.modality,
            "years_after_last_study": years_after_last_study,
            "keep_until_patient_age": keep_until_patient_age,
        },
    )
    return policy


def _proposals_cancel(proposals: Any, *, reason: str) -> None:
    """Cancel open proposals one by one (saved through the model, so django-auditlog sees each)."""
    now = timezone.now()
    for proposal in proposals.select_for_update():
        proposal.status, proposal.reason, proposal.decided_at = RetentionProposal.Status.CANCELLED, reason, now
        proposal.save(update_fields=["status", "reason", "decided_at", "updated_at"])


@transaction.atomic
def retention_policy_deactivate(*, actor: Any, policy: RetentionPolicy) -> RetentionPolicy:
    """Stop a policy (`tenants.manage_retention`) and cancel its open proposals. Idempotent. Audited."""
    access.require(actor, MANAGE_RETENTION, policy.tenant)
    if not policy.active:
        return policy
    policy.active = False
    policy.save(update_fields=["active", "updated_at"])
    _proposals_cancel(
        RetentionProposal.objects.filter(policy=policy, status=RetentionProposal.Status.PROPOSED),
        reason="The policy was stopped.",
    )
    audit_event_record(
        event=EventType.RETENTION_POLICY_SET, actor=actor, target=policy, extra={"change": "deactivated"}
    )
    return policy


@transaction.atomic
def legal_hold_place(
    *, actor: Any, reason: str, study: Study | None = None, patient: Patient | None = None
) -> LegalHold:
    """Hold one study or every study of one patient (`tenants.manage_retention`), with a reason; the open
    proposals it covers are cancelled. Audited (LEGAL_HOLD_PLACED)."""
    tenant = current_tenant()
    access.require(actor, MANAGE_RETENTION, tenant)
    reason = _reason_clean(reason, required=True)
    if (study is None) == (patient is None):
        raise ValidationError("Name either a study or a patient.")
    hold = LegalHold(
        tenant=tenant,
        study=study,
        patient=patient,
        study_instance_uid=study.study_instance_uid if study is not None else "",
        reason=reason,
        placed_by=actor,
    )
    hold.full_clean()
    hold.save()
    covered = RetentionProposal.objects.filter(status=RetentionProposal.Status.PROPOSED)
    covered = covered.filter(study=study) if study is not None else covered.filter(study__patient=patient)
    _proposals_cancel(covered, reason="A legal hold was placed.")
    if study is not None:
        participants = study_participants(study)
    else:
        assert patient is not None
        participants = [{"type": "studies.patient", "id": str(patient.public_id), "role": "patient"}]
    audit_event_record(
        event=EventType.LEGAL_HOLD_PLACED,
        actor=actor,
        target=hold,
        participants=participants,
        extra={"hold": str(hold.public_id), "reason": reason},
    )
    return hold


@transaction.atomic
def legal_hold_lift(*, actor: Any, hold: LegalHold, reason: str) -> LegalHold:
    """Lift a hold (`tenants.manage_retention`), with a reason. Idempotent. Audited (LEGAL_HOLD_LIFTED)."""
    access.require(actor, MANAGE_RETENTION, hold.tenant)
    reason = _reason_clean(reason, required=True)
    hold = LegalHold.objects.select_for_update().get(pk=hold.pk)
    if hold.lifted_at is not None:
        return hold
    hold.lifted_at, hold.lifted_by, hold.lift_reason = timezone.now(), actor, reason
    hold.save(update_fields=["lifted_at", "lifted_by", "lift_reason", "updated_at"])
    audit_event_record(
        event=EventType.LEGAL_HOLD_LIFTED,
        actor=actor,
        target=hold,
        extra={"hold": str(hold.public_id), "reason": reason},
    )
    return hold


def _open_proposal_locked(proposal: RetentionProposal) -> RetentionProposal:
    locked = RetentionProposal.objects.select_for_update().get(pk=proposal.pk)
    if locked.status != RetentionProposal.Status.PROPOSED:
        raise ValidationError(f"This proposal is already {locked.get_status_display().lower()}.")
    return locked


@transaction.atomic
def retention_proposal_reject(*, actor: Any, proposal: RetentionProposal, reason: str) -> RetentionProposal:
    """Reject a proposal (`tenants.manage_retention`) with a reason; the study stays and the next daily run may
    propose it again. Audited (RETENTION_REJECTED)."""
    access.require(actor, MANAGE_RETENTION, proposal.tenant)
    reason = _reason_clean(reason, required=True)
    proposal = _open_proposal_locked(proposal)
    proposal.status = RetentionProposal.Status.REJECTED
    proposal.decided_by, proposal.decided_at, proposal.reason = actor, timezone.now(), reason
    proposal.save(update_fields=["status", "decided_by", "decided_at", "reason", "updated_at"])
    audit_event_record(
        event=EventType.RETENTION_REJECTED,
        actor=actor,
        target=proposal,
        extra={"proposal": str(proposal.public_id), "reason": reason},
    )
    return proposal


@transaction.atomic
def retention_proposal_approve(*, actor: Any, proposal: RetentionProposal) -> RetentionProposal:
    """Approve a proposal (`tenants.manage_retention`). The first approval is recorded; the second, by another
    person, deletes the study (`_study_shred`). Refused when a hold covers the study or when it is no longer past
    its keep (a later study of the patient, a changed policy). Audited at each step."""
    access.require(actor, MANAGE_RETENTION, proposal.tenant)
    proposal = _open_proposal_locked(proposal)
    if proposal.study_id is None:
        raise ValidationError("The study of this proposal no longer exists.")
    study = Study.objects.select_for_update().select_related("patient").get(pk=proposal.study_id)
    if study_is_held(study=study):
        raise ValidationError("A legal hold covers this study: it cannot be deleted.")
    keep = _keep_for(study, list(RetentionPolicy.objects.filter(active=True)))
    if keep is None or keep.until > timezone.localdate():
        raise ValidationError("This study is no longer past its retention: reject the proposal.")
    now = timezone.now()
    if proposal.first_approved_by_id is None:
        proposal.first_approved_by, proposal.first_approved_at = actor, now
        proposal.save(update_fields=["first_approved_by", "first_approved_at", "updated_at"])
        audit_event_record(
            event=EventType.RETENTION_APPROVED,
            actor=actor,
            target=proposal,
            participants=study_participants(study),
            extra={"proposal": str(proposal.public_id)},
        )
        return proposal
    if proposal.first_approved_by_id == actor.pk:
        raise ValidationError("You approved this already: a second person must approve the deletion.")
    _study_shred(study=study, proposal=proposal, actor=actor)
    return proposal


def _study_shred(*, study: Study, proposal: RetentionProposal, actor: Any) -> RetentionTombstone:
    """Delete the study's rows and blobs inside the caller's transaction, then leave the tombstone and the audit
    event. The blobs' data keys are wrapped by the study key, whose only copies are its files in the two blob
    stores: they go (with the ciphertext) once the transaction commits, so neither a saved copy of the blobs nor
    a database backup taken before can be opened."""
    participants = study_participants(study)
    read_tallies_close_for_study(study=study)  # folded reads reach the trail before the study goes
    instances = list(Instance.objects.filter(series__study=study).select_related("blob").order_by("pk"))
    series = list(Series.objects.filter(study=study).select_related("thumbnail").order_by("pk"))
    bytes_deleted = sum(instance.blob.size for instance in instances)
    for instance in instances:
        blob = instance.blob
        instance.delete()
        blob_delete(blob=blob)
    for one in series:
        thumbnail = one.thumbnail
        one.delete()
        if thumbnail is not None:
            blob_delete(blob=thumbnail)
    # The study key goes last (the blobs protected it): its files leave both stores after the commit, and with
    # them every way to open the study's data keys, including the copies a database backup holds.
    study_key = study_key_get(study_instance_uid=study.study_instance_uid)
    quarantined = 0
    if study_key is not None:
        # Objects received for the study and kept in quarantine are sealed under its key since receipt (issue 10):
        # they go with it.
        quarantined += blob_quarantined_shred(study_key=study_key)
        study_key_destroy(row=study_key)
    # Exports holding the study go with it (their zips have keys of their own, destroyed with them), and so do
    # the quarantined copies of its instances kept for review under keys of their own (conflicts), with theirs.
    exports = exports_destroy_with_study(study=study)
    for item in (
        IngestItem.objects.select_for_update(of=("self",))
        .filter(sop_instance_uid__in=[instance.sop_instance_uid for instance in instances], quarantine__isnull=False)
        .select_related("quarantine")
    ):
        copy, item.quarantine = item.quarantine, None
        item.save(update_fields=["quarantine", "updated_at"])
        assert copy is not None
        blob_delete(blob=copy)
        quarantined += 1
    # Emergency-access grants point at the study; their start, end and review are on the audit trail.
    BreakGlassGrant.objects.filter(study=study).delete()
    now = timezone.now()
    assert proposal.first_approved_by is not None
    tombstone = RetentionTombstone.objects.create(
        tenant=study.tenant,
        proposal=proposal,
        policy=proposal.policy,
        study_instance_uid=study.study_instance_uid,
        study_date=study.study_date,
        patient_public_id=study.patient.public_id,
        series_instance_uids=[one.series_instance_uid for one in series],
        sop_instance_uids=[instance.sop_instance_uid for instance in instances],
        number_of_instances=len(instances),
        bytes_deleted=bytes_deleted,
        first_approved_by=proposal.first_approved_by,
        approved_by=actor,
        deleted_at=now,
    )
    study.delete()
    proposal.status, proposal.study = RetentionProposal.Status.DELETED, None
    proposal.decided_by, proposal.decided_at = actor, now
    proposal.save(update_fields=["status", "study", "decided_by", "decided_at", "updated_at"])
    audit_event_record(
        event=EventType.STUDY_DELETED,
        actor=actor,
        target=tombstone,
        participants=participants,
        extra={
            "proposal": str(proposal.public_id),
            "policy": str(proposal.policy.public_id),
            "first_approved_by": str(proposal.first_approved_by.subject_uuid),
            "instances": len(instances),
            "bytes": bytes_deleted,
            "exports_destroyed": exports,
            "quarantined_copies_destroyed": quarantined,
        },
    )
    return tombstone
