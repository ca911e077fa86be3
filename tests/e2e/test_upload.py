"""A technologist uploads a study in Debian's Chromium: real sign-in pages, the upload page's script sending each
file with a progress bar and showing each item's state live, then the study in the list."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from studies.dicom.synthetic import make_study
from studies.models import IngestItem, Study
from studies.tasks import ingest_process_task
from tenants.scoping import tenant_scope
from tests.tenants.factories import DEFAULT_PASSWORD, totp_device_for, totp_now

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def sign_in(page, base_url, username, device, next_path):
    main = page.locator("main")
    page.goto(f"{base_url}{next_path}")
    page.wait_for_url(re.compile(r"/accounts/login/"))
    main.locator("input[name=username]").fill(username)
    main.locator("input[name=password]").fill(DEFAULT_PASSWORD)
    main.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/accounts/mfa/"))
    main.locator("input[name=otp_token]").fill(totp_now(device))
    main.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(next_path) + "$"))


def test_technologist_uploads_files_and_sees_each_state_then_the_study(live_server, page, tenant_a, technologist_a):
    ARTIFACTS.mkdir(exist_ok=True)
    device = totp_device_for(technologist_a)
    files = make_study(series=1, instances_per_series=3, patient_name="UPLOAD^EVE", study_description="E2E upload")
    chosen = [
        *[{"name": f"IM{n:04d}.dcm", "mimeType": "application/dicom", "buffer": data} for n, data in enumerate(files)],
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"Shopping list, not an image.\n" * 20},
    ]

    sign_in(page, live_server.url, technologist_a.username, device, "/t/north/upload/")
    main = page.locator("main")
    batch = main.locator("#upload").get_attribute("data-batch")
    assert re.fullmatch(r"[0-9a-f-]{36}", batch)

    main.locator("#upload-files").set_input_files(chosen)

    table = main.locator("#upload-table")
    expect(table.locator("tbody tr")).to_have_count(4)
    expect(table.locator("tr[data-state=stored]")).to_have_count(3, timeout=30_000)
    expect(table.locator("tr[data-state=rejected]")).to_have_count(1)
    rejected = table.locator("tr[data-state=rejected]")
    expect(rejected.locator("td.name")).to_have_text("notes.txt")
    expect(rejected.locator(".reason")).not_to_be_empty()
    for bar in table.locator("progress").all():
        assert bar.evaluate("node => node.value") == 1
    expect(main.locator("#upload-summary")).to_have_text("Done: 3 stored, 1 rejected.")
    expect(main.locator("#upload-next")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "upload.png"), full_page=True)

    with tenant_scope(tenant_a):
        items = IngestItem.objects.filter(batch=batch)
        assert sorted(items.values_list("state", flat=True)) == ["rejected", "stored", "stored", "stored"]
        assert set(items.values_list("actor", flat=True)) == {technologist_a.pk}
        study = Study.objects.get()
    assert study.number_of_instances == 3

    main.get_by_role("link", name="See the studies").click()
    page.wait_for_url(re.compile(r"/t/north/studies/$"))
    row = main.locator(f"#study-{study.public_id}")
    expect(row).to_contain_text("UPLOAD, EVE")
    expect(row).to_contain_text("E2E upload")
    thumbnail = row.locator("img.thumb")
    expect(thumbnail).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())

    # The search is a POST answered in place: the patient's name never reaches the address bar.
    main.locator("input[name=text]").fill("upload")
    main.get_by_role("button", name="Search").click()
    page.wait_for_load_state()
    found = main.locator(f"#study-{study.public_id}")
    expect(found).to_be_visible()
    assert page.url == f"{live_server.url}/t/north/studies/"
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=found.locator("img.thumb").element_handle()
    )
    page.screenshot(path=str(ARTIFACTS / "studies.png"), full_page=True)

    # The ingest activity page tells the same story, with the reason and the scanner in use.
    page.locator("nav.tenant-nav").get_by_role("link", name="Ingest").click()
    page.wait_for_url(re.compile(r"/t/north/ingest/$"))
    expect(main.locator("#count-stored .badge")).to_have_text("3")
    expect(main.locator("#count-rejected .badge")).to_have_text("1")
    expect(main.locator("tr[data-state=rejected]")).to_contain_text("notes.txt")
    expect(main.locator("#scanner")).to_contain_text("built-in scanner")
    page.screenshot(path=str(ARTIFACTS / "ingest.png"), full_page=True)


def test_a_folder_with_a_zip_inside_is_followed_until_every_item_is_final(
    live_server, page, tenant_a, technologist_a, tmp_path, monkeypatch
):
    """A worker slower than the response: the uploads are answered while their items are still `received`, so the
    page must poll the batch and show each state as the worker (this test, here) finishes the items."""
    device = totp_device_for(technologist_a)
    first, second, third, fourth = make_study(series=2, instances_per_series=2, patient_name="FOLDER^FRED")
    folder = tmp_path / "export"
    (folder / "s1").mkdir(parents=True)
    (folder / "s1" / "IM0001.dcm").write_bytes(first)
    (folder / "s1" / "IM0002.dcm").write_bytes(second)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("s2/IM0001.dcm", third)
        archive.writestr("s2/IM0002.dcm", fourth)
    (folder / "s2.zip").write_bytes(buffer.getvalue())
    queued = []
    monkeypatch.setattr(ingest_process_task, "delay_on_commit", lambda **kwargs: queued.append(kwargs))
    polls = []
    page.on("request", lambda request: polls.append(request.url) if "/ingest/batch/" in request.url else None)
    sign_in(page, live_server.url, technologist_a.username, device, "/t/north/upload/")
    main = page.locator("main")

    main.locator("#upload-folder").set_input_files(folder)

    summary = main.locator("#upload-summary")
    expect(summary).to_have_text("4 being checked.", timeout=30_000)
    table = main.locator("#upload-table")
    expect(table.locator("tr[data-state=received]")).to_have_count(4)
    expect(table.locator("tr.file", has_text="s2.zip")).to_contain_text("Zip of 2 files")
    for task in queued:
        ingest_process_task(**task)
    expect(summary).to_have_text("Done: 4 stored.", timeout=30_000)
    names = table.locator("tr[data-state=stored] td.name").all_inner_texts()
    assert sorted(names) == ["export/s1/IM0001.dcm", "export/s1/IM0002.dcm", "s2/IM0001.dcm", "s2/IM0002.dcm"]
    assert polls, "the page polled the batch"
    page.screenshot(path=str(ARTIFACTS / "upload-folder.png"), full_page=True)
    with tenant_scope(tenant_a):
        study = Study.objects.get()
    assert (study.number_of_series, study.number_of_instances) == (2, 4)
