"""Reads of the archive for DICOMweb retrievals (WADO-RS, WADO-URI): the study and instances a caller may fetch.

Everything starts from `studies.selectors.study_list(actor=)`, so the permission decision (tenants.access) and the
tenant scope apply: an instance is found only through a study the caller may see. A UID the caller may not see is
`NotVisible`, the same as one that does not exist (another tenant's too). Searches (QIDO-RS) go through the one
matcher, `studies.selectors.matching`.
"""

from __future__ import annotations

from typing import Any

from studies.models import Instance, Study
from studies.selectors.studies import study_list
from tenants import access


def dicomweb_study_get(*, actor: Any, study_uid: str) -> Study:
    """One study by its Study Instance UID, if `actor` may see it; else NotVisible (a 404 like a missing one)."""
    try:
        return study_list(actor=actor).prefetch_related(None).get(study_instance_uid=study_uid)
    except (Study.DoesNotExist, Study.MultipleObjectsReturned) as exc:
        raise access.NotVisible() from exc


def dicomweb_instance_list(
    *,
    actor: Any,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> tuple[Study, list[Instance]]:
    """The study and the instances of a WADO resource (a study, a series of it, or one instance), in series and
    instance order, with blobs loaded. NotVisible if the study is not visible to `actor` or the resource names
    nothing in it. (A retrieval of the objects reads its rows as columns: `studies.selectors.storage`.)"""
    study = dicomweb_study_get(actor=actor, study_uid=study_uid)
    qs = Instance.objects.filter(series__study=study)
    qs = qs.select_related("blob", "series")
    if series_uid is not None:
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        qs = qs.filter(sop_instance_uid=sop_uid)
    instances = list(qs.order_by("series__series_number", "series_id", "instance_number", "pk"))
    if not instances:
        raise access.NotVisible()
    return study, instances
