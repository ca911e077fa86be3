"""Reads of the archive. Every list is filtered by the permission decision and the tenant scope."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from studies.models import IngestItem, Instance, Series, Study
from studies.selectors.catalogue import BY_KEYWORD, STUDY
from studies.selectors.matching import Key, any_key_condition, keys_condition
from tenants import access
from tenants.scoping import current_tenant


def _da(day: date | None) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}" if day else ""


def study_list(
    *,
    actor: Any,
    text: str = "",
    modality: str = "",
    date_from: date | None = None,
    date_to: date | None = None,
) -> models.QuerySet[Study]:
    """The studies of the current tenant that `actor` may see (`studies.view_study`: every study for roles with
    `tenants.view_studies`, else shares, referrals and break-glass grants), newest first.

    The page's form is translated into keys of the one matcher (studies.selectors.matching): `text` matches
    patient name or study description anywhere (`*`/`?` are wildcards), or patient id or accession number
    exactly (all case-insensitive); `modality` is ModalitiesInStudy; the dates a StudyDate range.
    Raises InvalidQuery for a value over the matcher's bounds.
    """
    qs = access.visible(actor, "studies.view_study", Study.objects.all())
    if text:
        anywhere = f"*{text}*"
        qs = qs.filter(
            any_key_condition(
                [
                    Key(BY_KEYWORD["patientname"], anywhere),
                    Key(BY_KEYWORD["patientid"], text, fold_case=True),
                    Key(BY_KEYWORD["accessionnumber"], text, fold_case=True),
                    Key(BY_KEYWORD["studydescription"], anywhere, fold_case=True),
                ],
                level=STUDY,
            )
        )
    keys = []
    if modality:
        keys.append(Key(BY_KEYWORD["modalitiesinstudy"], modality))
    if date_from or date_to:
        dates = f"{_da(date_from)}-{_da(date_to)}"
        keys.append(Key(BY_KEYWORD["studydate"], dates))
    if keys:
        qs = qs.filter(keys_condition(keys, level=STUDY))
    return qs.select_related("patient").prefetch_related(
        models.Prefetch("series", queryset=Series.objects.order_by("series_number", "pk"))
    )


def study_get(*, actor: Any, public_id: UUID | str) -> Study:
    try:
        return study_list(actor=actor).get(public_id=public_id)
    except (Study.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def series_get(*, actor: Any, public_id: UUID | str) -> Series:
    """One series of a study `actor` may see (the visibility of `study_list`), with its thumbnail blob; else
    NotVisible, the same for another tenant's series as for a missing one."""
    try:
        return (
            Series.objects.filter(study__in=study_list(actor=actor).values("pk"))
            .select_related("thumbnail")
            .get(public_id=public_id)
        )
    except (Series.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def series_list_for_study(*, actor: Any, study: Study) -> models.QuerySet[Series]:
    """The series of `study`, in series order, with their instances (instance order) prefetched: what the study
    page's viewer shows. Empty unless `actor` sees the study (the visibility of `study_list`, as a subquery)."""
    return (
        Series.objects.filter(study__in=study_list(actor=actor).filter(pk=study.pk).values("pk"))
        .order_by("series_number", "created_at", "pk")
        .prefetch_related(
            models.Prefetch(
                "instances",
                queryset=Instance.objects.order_by("instance_number", "created_at", "pk"),
            )
        )
    )


def ingest_item_list(*, actor: Any, state: str = "", batch: UUID | None = None) -> models.QuerySet[IngestItem]:
    """The current tenant's ingest activity, newest first, for members who may send studies
    (`tenants.upload_studies`); nothing for the others."""
    tenant = current_tenant()
    qs = IngestItem.objects.all()
    if not access.has_perm(actor, "tenants.upload_studies", tenant):
        return qs.none()
    if state:
        qs = qs.filter(state=state)
    if batch is not None:
        qs = qs.filter(batch=batch)
    return qs.select_related("actor", "device").order_by("-created_at", "-pk")


def ingest_state_counts(*, actor: Any) -> dict[str, int]:
    counts = dict.fromkeys(IngestItem.State.values, 0)
    for row in ingest_item_list(actor=actor).order_by().values("state").annotate(n=models.Count("pk")):
        counts[row["state"]] = row["n"]
    return counts


BUILTIN_SCANNER = "the built-in scanner, which only recognises the EICAR test file (development only)"


def scanner_description() -> str:
    """Which malware scanner checks incoming objects, in words for the ingest and operators' pages."""
    address = settings.CLAMD_ADDRESS
    return f"clamd at {address}" if address else BUILTIN_SCANNER
