"""Reads for retention (issue 13): policies, holds, the proposal queue and tombstones. Each needs
`tenants.manage_retention` on the tenant in scope; an object of another tenant is not found (a 404)."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from studies.models import LegalHold, Patient, RetentionPolicy, RetentionProposal, RetentionTombstone, Study
from tenants import access
from tenants.scoping import current_tenant

MANAGE_RETENTION = "tenants.manage_retention"


def _require(actor: Any) -> None:
    access.require(actor, MANAGE_RETENTION, current_tenant())


def _get(qs: QuerySet[Any], public_id: uuid.UUID | str) -> Any:
    try:
        return qs.get(public_id=public_id)
    except (qs.model.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def retention_policy_list(*, actor: Any) -> QuerySet[RetentionPolicy]:
    _require(actor)
    return RetentionPolicy.objects.select_related("created_by").order_by("-active", "modality", "name")


def retention_policy_get(*, actor: Any, public_id: uuid.UUID | str) -> RetentionPolicy:
    _require(actor)
    return _get(RetentionPolicy.objects.all(), public_id)


def retention_proposal_list(*, actor: Any, open_only: bool = True) -> QuerySet[RetentionProposal]:
    _require(actor)
    qs = RetentionProposal.objects.select_related("study__patient", "policy", "first_approved_by", "decided_by")
    if open_only:
        return qs.filter(status=RetentionProposal.Status.PROPOSED).order_by("due_on", "created_at")
    return qs.exclude(status=RetentionProposal.Status.PROPOSED).order_by("-decided_at")


def retention_proposal_get(*, actor: Any, public_id: uuid.UUID | str) -> RetentionProposal:
    _require(actor)
    return _get(RetentionProposal.objects.select_related("policy"), public_id)


def legal_hold_list(*, actor: Any) -> QuerySet[LegalHold]:
    _require(actor)
    return LegalHold.objects.select_related("patient", "study__patient", "placed_by", "lifted_by").order_by(
        "lifted_at", "-created_at"
    )


def legal_hold_get(*, actor: Any, public_id: uuid.UUID | str) -> LegalHold:
    _require(actor)
    return _get(LegalHold.objects.all(), public_id)


def legal_hold_target_find(*, actor: Any, study_instance_uid: str, patient_id: str) -> Study | Patient:
    """The study (by Study Instance UID) or the patient (by Patient ID) a hold is to cover, typed into a form
    (never a URL). Not found: NotVisible."""
    _require(actor)
    if study_instance_uid:
        study = Study.objects.filter(study_instance_uid=study_instance_uid.strip()).first()
        if study is None:
            raise access.NotVisible()
        return study
    patient = Patient.objects.filter(patient_id=patient_id.strip()).order_by("pk").first()
    if patient is None:
        raise access.NotVisible()
    return patient


def retention_tombstone_list(*, actor: Any) -> QuerySet[RetentionTombstone]:
    _require(actor)
    return RetentionTombstone.objects.select_related("policy", "first_approved_by", "approved_by")
