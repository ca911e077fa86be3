"""Studies for the retention tests, stored through the real ingest pipeline (eager Celery, real blob stores)."""

from __future__ import annotations

import uuid
from datetime import date

from django.test import TestCase

from studies.dicom.synthetic import make_study
from studies.models import IngestItem, Study
from studies.services import ingest_receive, retention
from tenants.scoping import tenant_scope


def stored_study(tenant, *, patient_id: str, study_date: date, birth: date | None = date(1960, 5, 1), **kw) -> Study:
    files = make_study(
        series=2, instances_per_series=2, patient_id=patient_id, study_date=study_date, patient_birth_date=birth, **kw
    )
    with tenant_scope(tenant):
        with TestCase.captureOnCommitCallbacks(execute=True):  # the pipeline runs on commit (eager Celery)
            items = [ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=d) for d in files]
        for item in items:
            item.refresh_from_db()
            assert item.instance is not None, item.reason
        return Study.objects.select_related("patient").get(patient__patient_id=patient_id, study_date=study_date)


def policy_make(tenant, actor, *, modality: str = "", years: int = 7, until_age: int | None = None, name: str = ""):
    with tenant_scope(tenant):
        return retention.retention_policy_create(
            actor=actor,
            name=name or f"{modality or 'All'} {years} years",
            modality=modality,
            years_after_last_study=years,
            keep_until_patient_age=until_age,
        )
