"""What the archive's storage holds: the blobs a retrieval reads (WADO-RS), and, for the compliance report,
encryption at rest and replication."""

from __future__ import annotations

from typing import Any, NamedTuple

from django.db import models

from audit.selectors import ReportSection
from studies.models import Blob, Instance, TenantKey
from studies.selectors.studies import study_list
from studies.storage.blobs import BLOB_COLUMNS, BlobRef
from tenants import access
from tenants.db.base import prepared_if_fixed

# The study of a retrieval as the audit names it (studies.services.reads.StudyRow): patient pk, patient ID,
# patient name, study pk, study UID, accession number.
_STUDY_COLUMNS = (
    "series__study__patient_id", "series__study__patient__patient_id", "series__study__patient__name",
    "series__study_id", "series__study__study_instance_uid", "series__study__accession_number",
)  # fmt: skip
_ROW_COLUMNS = (*_STUDY_COLUMNS, "sop_instance_uid", "transfer_syntax_uid", *(f"blob__{c}" for c in BLOB_COLUMNS))


class RetrievalRow(NamedTuple):
    """One instance of a retrieval of DICOM objects: what WADO-RS's bulk path reads of it, as columns."""

    sop_instance_uid: str
    transfer_syntax_uid: str
    blob: BlobRef


def retrieval_rows(
    *, actor: Any, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[tuple[int, str, str, int, str, str], list[RetrievalRow]]:
    """The study (as the audit's StudyRow) and the instances of a retrieval of DICOM objects (a study, a series of
    it, or one instance), in series and instance order, with what reading their blobs needs; NotVisible (a 404
    like a missing one) when `actor` may not see the study (`studies.view_study`, through `study_list`: the one
    permission decision and the tenant scope) or the resource names nothing in it.

    One statement, its rows as tuples (issue 10): a WADO-RS series is one row per instance, and the study
    look-up, its own statement, then 60 Instance and 60 Blob objects cost 3.8 ms of CPU where this costs 2.8
    (in-process, min of 40; docs/BENCHMARKS.md, "h4 branch, session 4")."""
    visible = study_list(actor=actor).prefetch_related(None).filter(study_instance_uid=study_uid).order_by()
    qs = Instance.objects.filter(series__study__in=visible.values("pk"))
    if series_uid is not None:
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        qs = qs.filter(sop_instance_uid=sop_uid)
    columns = qs.order_by("series__series_number", "series_id", "instance_number", "pk").values_list(*_ROW_COLUMNS)
    # Prepared once per connection (tenants.db) when every condition is an equality (the UIDs, the tenant, and for
    # a role that sees every study nothing more): PostgreSQL planned this join at each retrieval, longer than it
    # ran it. A visibility rule with a time range (shares, break-glass) is planned for its values, as before.
    with prepared_if_fixed(columns.query):
        values = list(columns)
    if not values:
        raise access.NotVisible()
    study = len(_STUDY_COLUMNS)
    rows = [RetrievalRow(row[study], row[study + 1], BlobRef(*row[study + 2 :])) for row in values]
    return values[0][:study], rows


def encryption_compliance_section(actor: Any) -> ReportSection:
    """Every blob is envelope-encrypted (AES-256-GCM, a data key per blob wrapped by the tenant key, itself wrapped
    by the master key from the environment): the section counts what is stored, under which tenant-key versions,
    and how many blobs still lack their replica copy."""
    blobs = Blob.objects.order_by()
    totals = blobs.aggregate(n=models.Count("pk"), size=models.Sum("size"))
    active = TenantKey.objects.filter(active=True).order_by("-version").first()
    by_version = dict(blobs.values_list("key_version").annotate(n=models.Count("pk")))
    unreplicated = blobs.filter(replicated_at__isnull=True).exclude(kind=Blob.Kind.QUARANTINE).count()
    size_gb = (totals["size"] or 0) / 1e9
    rows = [
        ("Encrypted objects (AES-256-GCM, one data key each)", f"{totals['n']} ({size_gb:.2f} GB of plaintext)"),
        ("Active tenant key version", str(active.version) if active else "none yet (nothing stored)"),
        (
            "Objects by key",
            ", ".join(f"{'study keys' if v == 0 else f'tenant key v{v}'}: {n}" for v, n in sorted(by_version.items()))
            or "none",
        ),
        ("Objects without their replica copy", str(unreplicated)),
    ]
    return ReportSection("Encryption at rest and replication", rows, ok=unreplicated == 0)
