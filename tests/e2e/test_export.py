"""A radiologist asks for a de-identified export of a study in Debian's Chromium, watches the progress bar finish,
downloads the zip once (its files checked against Annex E markers), and a second try is refused with 410."""

from __future__ import annotations

import io
import re
import uuid
import zipfile
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import expect

from audit.events import EventType
from audit.models import AuditEvent
from studies import services
from studies.dicom.synthetic import make_study
from studies.models import Export, IngestItem, Study
from tenants.scoping import tenant_scope
from tests.e2e.test_upload import sign_in
from tests.tenants.factories import totp_device_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_radiologist_exports_a_study_deidentified_and_downloads_it_once(live_server, page, tenant_a, radiologist_a):
    ARTIFACTS.mkdir(exist_ok=True)
    files = make_study(series=2, instances_per_series=2, patient_name="EXPORT^EVE", patient_id="MRN-E2E")
    with tenant_scope(tenant_a):
        batch = uuid.uuid4()
        for data in files:
            services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data)
    with tenant_scope(tenant_a):
        study = Study.objects.get()
    device = totp_device_for(radiologist_a)

    path = f"/t/north/studies/{study.public_id}/export/"
    sign_in(page, live_server.url, radiologist_a.username, device, path)
    main = page.locator("main")
    expect(main.locator("#study-summary")).to_contain_text("EXPORT, EVE")
    main.locator("input[name=kind][value=deidentified]").check()
    main.locator("input[name=modified_dates]").check()
    main.locator("#export-form button[type=submit]").click()

    page.wait_for_url(re.compile(r"/t/north/exports/[0-9a-f-]{36}/$"))
    bar = main.locator("#export-progress")
    expect(main.locator("#export-label")).to_have_text("Done", timeout=30_000)
    assert bar.evaluate("node => node.value") == 100
    expect(main.locator("#export-count")).to_have_text("4 of 4")
    link = main.locator("#export-download")
    expect(link).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "export-progress.png"), full_page=True)

    href = link.get_attribute("href")
    with page.expect_download() as info:
        link.click()
    data = Path(info.value.path()).read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert len(archive.namelist()) == 4
    originals = {str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID) for f in files} | {study.study_instance_uid}
    for name in archive.namelist():
        member = archive.read(name)
        assert b"EXPORT^EVE" not in member
        assert b"MRN-E2E" not in member
        assert not any(uid.encode() in member for uid in originals)
        ds = pydicom.dcmread(io.BytesIO(member))
        assert ds.PatientIdentityRemoved == "YES"
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    expect(main.locator("#export-downloaded")).to_be_visible()

    again = page.request.get(f"{live_server.url}{href}")
    assert again.status == 410

    with tenant_scope(tenant_a):
        export = Export.objects.get()
        assert export.downloaded_at is not None
        events = AuditEvent.objects.filter(event_type=EventType.STUDY_EXPORTED).order_by("sequence")
        assert [e.extra["phase"] for e in events] == ["requested", "downloaded"]
        assert all(e.extra["Anonymized"] is True for e in events)
