"""Exports through the real services and the eager Celery job: progress, the zip, download once, who may."""

from __future__ import annotations

import io
import uuid
import zipfile

import pydicom
import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError

from audit.events import EventType
from audit.models import AuditEvent
from studies import services
from studies.dicom.deidentify import MODIFIED_DATES, RETAIN_DEVICE_IDENTITY
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Blob, Export, IngestItem, Study
from tenants import access
from tenants.models import Role
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db(transaction=True)


def ingest_files(tenant, files: list[bytes]) -> Study:
    with tenant_scope(tenant):
        batch = uuid.uuid4()
        for data in files:
            item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data)
        item.refresh_from_db()
        assert item.state == IngestItem.State.STORED
        return item.instance.series.study


@pytest.fixture
def study_a(tenant_a) -> Study:
    return ingest_files(
        tenant_a, make_study(series=2, instances_per_series=2, patient_name="DOE^JANE", patient_id="MRN-777")
    )


def request(user, tenant, studies, **kw) -> Export:
    with tenant_scope(tenant):
        export = services.export_request(actor=user, studies=studies, **kw)
        export.refresh_from_db()
        return export


def events(tenant, event: EventType) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event).order_by("sequence"))


def test_deidentified_export_runs_to_100_percent_and_downloads_once(tenant_a, radiologist_a, study_a):
    export = request(radiologist_a, tenant_a, [study_a], options=[MODIFIED_DATES])

    assert export.state == Export.State.DONE
    assert (export.done, export.total, export.percent) == (4, 4, 100)
    with tenant_scope(tenant_a):
        assert export.blob.kind == Blob.Kind.EXPORT
        data = services.export_download_once(actor=radiologist_a, export=export)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert len(names) == 4
    assert sorted(names)[0] == "study-001/series-001/00001.dcm"
    for name in names:
        member = zipfile.ZipFile(io.BytesIO(data)).read(name)
        assert b"DOE^JANE" not in member
        assert b"MRN-777" not in member
        assert study_a.study_instance_uid.encode() not in member
        ds = pydicom.dcmread(io.BytesIO(member))
        assert ds.PatientIdentityRemoved == "YES"
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    with tenant_scope(tenant_a), pytest.raises(services.ExportGone):
        services.export_download_once(actor=radiologist_a, export=export)
    with tenant_scope(tenant_a):
        export.refresh_from_db()
        assert export.downloaded_at is not None
        assert export.blob is None
        assert not Blob.objects.filter(kind=Blob.Kind.EXPORT).exists()  # shredded after the one download

    recorded = events(tenant_a, EventType.STUDY_EXPORTED)
    assert [e.extra["phase"] for e in recorded] == ["requested", "downloaded"]
    assert all(e.extra["Anonymized"] is True for e in recorded)
    assert recorded[0].actor_user_id == radiologist_a.pk
    assert {"type": "patient", "id": "MRN-777", "name": "DOE^JANE"} in recorded[0].participants


def test_uids_are_consistent_across_the_files_of_one_export(tenant_a, radiologist_a, study_a):
    export = request(radiologist_a, tenant_a, [study_a], options=[RETAIN_DEVICE_IDENTITY])
    with tenant_scope(tenant_a):
        data = services.export_download_once(actor=radiologist_a, export=export)
    archive = zipfile.ZipFile(io.BytesIO(data))
    datasets = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist()]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 2
    assert len({ds.PatientID for ds in datasets}) == 1
    assert all(ds.StudyInstanceUID.startswith("2.25.") for ds in datasets)


def test_another_user_of_the_tenant_cannot_download(tenant_a, radiologist_a, make_member, study_a):
    other = make_member(tenant_a, Role.RADIOLOGIST, "north-rad2")
    export = request(radiologist_a, tenant_a, [study_a])
    with tenant_scope(tenant_a), pytest.raises(access.NotVisible):
        services.export_download_once(actor=other, export=export)
    with tenant_scope(tenant_a):
        assert services.export_download_once(actor=radiologist_a, export=export)


def test_a_member_who_cannot_see_the_study_cannot_export_it(tenant_a, admin_a, make_member, study_a):
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-ref")
    for user in (admin_a, referrer):
        with tenant_scope(tenant_a), pytest.raises(access.NotVisible):
            services.export_request(actor=user, studies=[study_a])
    with tenant_scope(tenant_a):
        assert not Export.objects.exists()


def test_identified_export_needs_its_permission(tenant_a, technologist_a, study_a):
    with tenant_scope(tenant_a), pytest.raises(access.Forbidden):
        services.export_request(
            actor=technologist_a, studies=[study_a], kind=Export.Kind.IDENTIFIED, purpose="x", recipient="y"
        )


def test_identified_export_is_a_disclosure_with_recipient_and_purpose(tenant_a, radiologist_a, study_a):
    export = request(
        radiologist_a,
        tenant_a,
        [study_a],
        kind=Export.Kind.IDENTIFIED,
        purpose="Tumour board",
        recipient="Dr Who, St Elsewhere",
        options=[MODIFIED_DATES],
    )
    assert export.options == []
    with tenant_scope(tenant_a):
        data = services.export_download_once(actor=radiologist_a, export=export)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert all(b"DOE^JANE" in archive.read(n) for n in archive.namelist())
    recorded = events(tenant_a, EventType.DISCLOSURE_EXPORTED)
    assert [e.extra["phase"] for e in recorded] == ["requested", "downloaded"]
    assert recorded[0].extra["recipient"] == "Dr Who, St Elsewhere"
    assert recorded[0].extra["purpose"] == "Tumour board"
    assert recorded[0].extra["Anonymized"] is False
    assert events(tenant_a, EventType.STUDY_EXPORTED) == []


def test_identified_export_without_purpose_is_refused(tenant_a, radiologist_a, study_a):
    with tenant_scope(tenant_a), pytest.raises(ValidationError):
        services.export_request(actor=radiologist_a, studies=[study_a], kind=Export.Kind.IDENTIFIED)


def test_burned_in_annotation_fails_the_export_without_patient_data(tenant_a, radiologist_a):
    ds = pydicom.dcmread(io.BytesIO(make_instance(patient_name="SMITH^JOHN")))
    ds.BurnedInAnnotation = "YES"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    study = ingest_files(tenant_a, [out.getvalue()])

    export = request(radiologist_a, tenant_a, [study])

    assert export.state == Export.State.FAILED
    assert "Burned In Annotation" in export.error
    assert "SMITH" not in export.error
    # The failure is saved through the model, so django-auditlog records it (issue 12, every change recorded).
    failed = LogEntry.objects.get_for_object(export).filter(action=LogEntry.Action.UPDATE, changes__has_key="error")
    assert failed.count() == 1
    assert failed.get().changes["state"][1] == Export.State.FAILED
    with tenant_scope(tenant_a), pytest.raises(services.ExportNotReady):
        services.export_download_once(actor=radiologist_a, export=export)


def test_run_is_idempotent(tenant_a, radiologist_a, study_a):
    export = request(radiologist_a, tenant_a, [study_a])
    with tenant_scope(tenant_a):
        assert services.export_run(export_id=export.pk) is None  # already done: not claimed again


def test_unknown_option_is_refused(tenant_a, radiologist_a, study_a):
    with tenant_scope(tenant_a), pytest.raises(ValidationError):
        services.export_request(actor=radiologist_a, studies=[study_a], options=["113110"])
