"""What the archive's storage holds, for the compliance report: encryption at rest and replication."""

from __future__ import annotations

from typing import Any

from django.db import models

from audit.selectors import ReportSection
from studies.models import Blob, TenantKey


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
