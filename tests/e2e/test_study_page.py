"""The study page in Debian's Chromium: a radiologist signs in (real pages), opens the study list, clicks a study,
and the viewer shows frames rendered by our WADO-RS endpoint with the MFA session: the arrow keys, the wheel and
the slider move through the images, a window preset and a drag change the window asked for, zoom changes the
displayed size, another series can be chosen; nothing is blocked by the Content-Security-Policy."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import expect

from audit.events import EventType
from audit.models import AuditEvent
from studies import services
from studies.dicom.synthetic import make_study
from studies.models import IngestItem, ReadTally, Series, Study
from tenants.scoping import tenant_scope
from tests.e2e.test_upload import sign_in
from tests.tenants.factories import totp_device_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LOADED = "img => img.complete && img.naturalWidth > 0 && !img.dataset.loading"


def query(src: str) -> dict[str, list[str]]:
    return parse_qs(urlparse(src).query)


def wait_for_frame(page, img):
    page.wait_for_function(LOADED, arg=img.element_handle())
    return img.get_attribute("src")


def test_radiologist_opens_a_study_and_reads_it_in_the_viewer(live_server, page, tenant_a, radiologist_a):
    ARTIFACTS.mkdir(exist_ok=True)
    files = make_study(
        series=2, instances_per_series=3, rows=256, columns=256, patient_name="VIEWER^VERA", patient_id="MRN-V1",
        study_description="CT chest", accession="V-100", referring="HOUSE^GREGORY",
    )  # fmt: skip
    with tenant_scope(tenant_a):
        batch = uuid.uuid4()
        for data in files:
            services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data)
    with tenant_scope(tenant_a):
        study = Study.objects.get()
        series = list(Series.objects.filter(study=study).order_by("series_number"))
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    sign_in(page, live_server.url, radiologist_a.username, totp_device_for(radiologist_a), "/t/north/studies/")
    main = page.locator("main")
    main.locator(f"#study-{study.public_id}").get_by_role("link", name="VIEWER, VERA").click()
    page.wait_for_url(re.compile(rf"/t/north/studies/{study.public_id}/$"))
    expect(main.locator("#patient")).to_contain_text("MRN-V1")
    expect(main.locator("#study")).to_contain_text("HOUSE, GREGORY")
    expect(main.locator("#study")).to_contain_text("V-100")
    expect(main.locator("#study-share")).to_be_visible()
    expect(main.locator("#study-export")).to_be_visible()

    img = main.locator("#frame")
    position = main.locator("#frame-position")
    first = wait_for_frame(page, img)
    assert f"/dicomweb/north/studies/{study.study_instance_uid}/series/{series[0].series_instance_uid}/" in first
    assert "/frames/1/rendered" in first
    assert query(first)["accept"] == ["image/png"]
    assert "window" not in query(first)  # "Default": the file's own window
    expect(position).to_have_text(re.compile(r"^Image 1 of 3"))
    for thumb in main.locator("#series-list img.thumb").all():
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())

    # The arrow key moves to the next instance.
    main.locator("#viewport").focus()
    page.keyboard.press("ArrowDown")
    expect(position).to_have_text(re.compile(r"^Image 2 of 3"))
    second = wait_for_frame(page, img)
    assert second != first

    # The slider, then the wheel.
    main.locator("#frame-slider").fill("3")
    expect(position).to_have_text(re.compile(r"^Image 3 of 3"))
    third = wait_for_frame(page, img)
    assert third not in (first, second)
    main.locator("#viewport").hover()
    page.mouse.wheel(0, -120)
    expect(position).to_have_text(re.compile(r"^Image 2 of 3"))
    assert wait_for_frame(page, img) == second

    # The lung preset asks the server for its window.
    main.get_by_role("button", name="Lung", exact=True).click()
    expect(img).to_have_attribute("src", re.compile(r"window=-600,1500,LINEAR"))
    lung = wait_for_frame(page, img)
    assert query(lung)["window"] == ["-600,1500,LINEAR"]
    expect(main.locator("#frame-window")).to_have_text("W 1500 · L -600")

    # Dragging changes window and level from there.
    box = main.locator("#viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 30, steps=5)
    page.mouse.up()
    expect(img).not_to_have_attribute("src", lung)
    dragged = wait_for_frame(page, img)
    center, width, function = query(dragged)["window"][0].split(",")
    assert (float(center) > -600, float(width) > 1500, function) == (True, True, "LINEAR")
    expect(main.get_by_role("button", name="Lung", exact=True)).to_have_attribute("aria-pressed", "false")

    # Zoom in: the image is shown larger.
    before = img.bounding_box()["width"]
    main.get_by_role("button", name="Zoom in").click()
    main.get_by_role("button", name="Zoom in").click()
    expect(main.locator("#frame-zoom")).to_have_text("156%")
    assert img.bounding_box()["width"] > before * 1.5
    page.screenshot(path=str(ARTIFACTS / "study-zoomed.png"), full_page=True)

    # Another series, fitted, in the file's own window.
    main.locator(f"#series-{series[1].public_id}").click()
    expect(img).to_have_attribute("src", re.compile(re.escape(series[1].series_instance_uid)))
    main.get_by_role("button", name="Fit", exact=True).click()
    main.get_by_role("button", name="Default", exact=True).click()
    expect(main.locator("#frame-zoom")).to_have_text("Fit")
    assert "window" not in query(wait_for_frame(page, img))
    expect(position).to_have_text(re.compile(r"^Image 1 of 3"))
    page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)

    # The study's access history shows these reads. Thumbnails and frames of one study by one person fold into
    # one window: whichever came first opens it, the others are counted into it.
    main.locator("#study-history").click()
    page.wait_for_url(re.compile(rf"/t/north/studies/{study.public_id}/history/$"))
    history = main.locator("#access-history")
    expect(history).to_contain_text("study page")
    expect(history).to_contain_text(re.compile("rendered|thumbnail"))
    expect(history).to_contain_text(radiologist_a.username)
    page.screenshot(path=str(ARTIFACTS / "study-history.png"), full_page=True)

    assert problems == []  # no CSP violation, no script error, no failed frame
    with tenant_scope(tenant_a):
        reads = AuditEvent.objects.filter(event_type=EventType.INSTANCES_ACCESSED, actor_user=radiologist_a)
        kinds = {e.extra.get("kind") for e in reads}
        assert "study page" in kinds
        assert kinds & {"rendered", "thumbnail"}
        window = ReadTally.objects.get(user=radiologist_a, study=study)
        assert window.folded >= 2  # the frames read after the window opened are counted, not dropped
        assert all(study.study_instance_uid in [p["id"] for p in e.participants] for e in reads)
