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


# What a retrieval of DICOM objects reads of each instance and its blob (studies.dicomweb.wado, the blob read in
# studies.storage.blobs): a WADO-RS series is one row per instance, and building Instance, Blob and Series objects
# with every column (five timestamps a row among them) was 2.8 ms of CPU for 60 instances; these columns, 1.7 ms.
# A column left out is loaded by its own query when read, so a test counts a series' statements against one
# instance's (tests/studies/dicomweb/test_wado_stream.py).
RETRIEVAL_FIELDS = (
    "id", "tenant_id", "sop_instance_uid", "transfer_syntax_uid", "blob_id",
    "blob__id", "blob__tenant_id", "blob__public_id", "blob__kind", "blob__storage_name", "blob__size",
    "blob__wrapped_key", "blob__key_version", "blob__study_key_id", "blob__damaged_at",
)  # fmt: skip


def dicomweb_instance_list(
    *,
    actor: Any,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    retrieval: bool = False,
) -> tuple[Study, list[Instance]]:
    """The study and the instances of a WADO resource (a study, a series of it, or one instance), in series and
    instance order, with blobs loaded. NotVisible if the study is not visible to `actor` or the resource names
    nothing in it. `retrieval`: only the columns a retrieval of the objects reads (`RETRIEVAL_FIELDS`), without
    the series."""
    study = dicomweb_study_get(actor=actor, study_uid=study_uid)
    qs = Instance.objects.filter(series__study=study)
    qs = qs.select_related("blob").only(*RETRIEVAL_FIELDS) if retrieval else qs.select_related("blob", "series")
    if series_uid is not None:
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        qs = qs.filter(sop_instance_uid=sop_uid)
    instances = list(qs.order_by("series__series_number", "series_id", "instance_number", "pk"))
    if not instances:
        raise access.NotVisible()
    return study, instances
