"""Synthetic studies for the DICOMweb read tests, ingested through the real pipeline (eager Celery)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from audit.models import AuditEvent
from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem, Study
from tenants.scoping import tenant_scope

JSON = "application/dicom+json"


def ingest(tenant, **kw: Any) -> Study:
    """One instance (and its study) stored in `tenant`; returns the study."""
    data = make_instance(**kw)
    with tenant_scope(tenant):
        item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
        item.refresh_from_db()
        assert item.instance is not None, item.reason
        return Study.objects.select_related("patient").get(pk=item.instance.series.study_id)


def ingest_files(tenant, files: list[bytes]) -> None:
    with tenant_scope(tenant):
        for data in files:
            item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
            item.refresh_from_db()
            assert item.instance is not None, item.reason


def value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def events(tenant, event_type: int) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event_type).order_by("sequence"))


def some_studies(tenant) -> dict[str, Study]:
    return {
        "smith": ingest(tenant, patient_id="P-SMITH", patient_name="SMITH^JOHN", accession="A100",
                        study_date=date(2024, 1, 5), modality="CT", referring="DOE^JOHN"),
        "smyth": ingest(tenant, patient_id="P-SMYTH", patient_name="Smyth^Jane", accession="A200",
                        study_date=date(2024, 1, 20), modality="MR", referring="ROE^RICHARD"),
        "jones": ingest(tenant, patient_id="P-JONES", patient_name="JONES^AMY", accession="A300",
                        study_date=date(2024, 3, 1), modality="CT", referring="ROE^RICHARD"),
    }  # fmt: skip
