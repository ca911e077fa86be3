"""django-auditlog diffs never hold patient identifiers (issue 8): a Patient's name, ID and birth date, a
study's accession number and date, an uploaded file's name are masked whole in the LogEntry, on the audit page
and in its CSV, while the entry still says which fields changed."""

from __future__ import annotations

import datetime

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from audit.context import AUDITLOG_MASKED
from studies.models import Patient, Study
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db

SECRETS = ("SMITH^ALICE", "JONES^ALICE", "MRN-778899", "MRN-112233", "1961-04-05", "1962-05-06", "ACC-5566", "ACC-9900")


@pytest.fixture
def patient_changes(tenant_a, technologist_a):
    with tenant_scope(tenant_a), set_actor(technologist_a):
        patient = Patient.objects.create(
            tenant=tenant_a, patient_id="MRN-778899", name="SMITH^ALICE", birth_date=datetime.date(1961, 4, 5)
        )
        patient.name, patient.patient_id = "JONES^ALICE", "MRN-112233"
        patient.birth_date = datetime.date(1962, 5, 6)
        patient.save()
        study = Study.objects.create(
            tenant=tenant_a,
            patient=patient,
            study_instance_uid="1.2.826.0.1.3680043.10.999.77",
            accession_number="ACC-5566",
            study_date=datetime.date(2026, 1, 2),
        )
        study.accession_number = "ACC-9900"
        study.save()
    return patient, study


def entries(tenant, obj) -> list[LogEntry]:
    with tenant_scope(tenant):
        kind = ContentType.objects.get_for_model(type(obj))
        return list(LogEntry.objects.filter(content_type=kind, object_pk=str(obj.pk)).order_by("pk"))


def test_a_patient_change_is_masked_in_the_log_entry(tenant_a, patient_changes):
    patient, study = patient_changes
    created, updated = entries(tenant_a, patient)
    assert updated.changes_dict["name"] == [AUDITLOG_MASKED, AUDITLOG_MASKED]
    assert updated.changes_dict["patient_id"] == [AUDITLOG_MASKED, AUDITLOG_MASKED]
    assert updated.changes_dict["birth_date"] == [AUDITLOG_MASKED, AUDITLOG_MASKED]
    assert created.changes_dict["name"][0] in ("None", "", None)  # a creation still shows the field was set
    assert created.changes_dict["name"][1] == AUDITLOG_MASKED
    study_entries = entries(tenant_a, study)
    assert study_entries[-1].changes_dict["accession_number"] == [AUDITLOG_MASKED, AUDITLOG_MASKED]
    for entry in [created, updated, *study_entries]:
        text = str(entry.changes) + entry.object_repr + str(entry.additional_data)
        for secret in SECRETS:
            assert secret not in text


def test_the_audit_page_and_its_csv_show_masked_values(client_for, tenant_a, compliance_a, patient_changes):
    client = client_for(compliance_a)
    page = client.get("/t/north/audit/", {"event": "changes"})
    assert page.status_code == 200
    html = page.content.decode()
    assert AUDITLOG_MASKED in html
    csv_text = b"".join(client.get("/t/north/audit/export.csv").streaming_content).decode()
    assert AUDITLOG_MASKED in csv_text
    for secret in SECRETS:
        assert secret not in html
        assert secret not in csv_text
