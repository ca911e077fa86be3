"""The OHIF Viewer 3, as published on npm (@ohif/app), against the portal: configured as the README says
(scripts/ohif.py writes app-config.js with the bearer token set through OHIF's user-authentication service and the
portal's real port), served statically on another origin, and driven in Debian's Chromium. The study list shows the
study, the viewer shows both series' thumbnails and renders and scrolls a series; no DICOMweb request the browser
makes is answered 4xx or 5xx, and the audit trail holds the reads."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import expect
from pydicom.uid import RLELossless

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from studies import services as study_services
from studies.dicom.synthetic import make_instance, make_study
from studies.models import IngestItem, ReadTally, Study
from tenants import services
from tenants.scoping import tenant_scope
from tests.interop.ohif_script import SCRIPT, ohif

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SLICES = 24


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    """The OHIF build, fetched once into the cache. Skipped only when nothing is cached and npm's registry cannot
    be reached; any other failure to fetch fails the test."""
    try:
        return ohif.fetch()
    except ohif.FetchError as exc:
        if ohif.cached_dist() is None and not _registry_reachable():
            pytest.skip(f"no cached OHIF build under {ohif.cache_root()} and the npm registry is unreachable: {exc}")
        raise


def _registry_reachable() -> bool:
    try:
        done = subprocess.run(["npm", "ping"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def portal_url(live_server, settings) -> str:
    """The URL the portal really serves on. One place to swap live_server for `make run` (tests/journey/).
    PORTAL_BASE_URL keeps a port the portal does not serve on, so nothing the viewer is given may come from it."""
    settings.PORTAL_BASE_URL = "http://127.0.0.1:8000"
    return live_server.url


@dataclass
class Viewer:
    url: str
    log: Path


@pytest.fixture
def ohif_viewer(ohif_dist, portal_url, settings, tenant_a, radiologist_a, tmp_path) -> Iterator[Viewer]:
    """scripts/ohif.py serving the build on a free loopback port with an app-config.js for tenant A and a token of
    its radiologist, whose origin the portal allows for DICOMweb (CORS)."""
    with tenant_scope(tenant_a):
        _, token = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="ohif")
    log = tmp_path / "ohif.log"
    env = {**os.environ, "OHIF_TOKEN": token}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "serve", "--port", "0", "--portal", portal_url, "--tenant", tenant_a.slug],
            stdout=subprocess.PIPE, stderr=out, env=env, text=True,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"scripts/ohif.py serve said {line!r}; log: {log.read_text()}"
        settings.DICOMWEB_CORS_ORIGINS = [match.group(1)]
        yield Viewer(url=match.group(1), log=log)
    finally:
        process.terminate()
        process.wait(timeout=10)


CANVAS_PIXELS = """canvas => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, sum = 0;
  for (let i = 0; i < data.length; i += 4) {
    const v = data[i] + data[i + 1] + data[i + 2];
    if (v > 30) lit += 1;
    sum = (sum * 31 + v) % 1000000007;
  }
  return {lit, total: data.length / 4, digest: sum};
}"""
THUMBNAIL_LOADED = "img => img.complete && img.naturalWidth > 0"


def with_geometry(files: list[bytes]) -> list[bytes]:
    """The slices of a CT volume: one frame of reference, orientation, spacing and a position per slice, which
    OHIF reads from the series metadata to build a reconstructable volume (without them it flags the series)."""
    frame_of_reference = pydicom.uid.generate_uid()
    out = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-32, -32, 2.5 * int(ds.InstanceNumber)]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 2.5
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def rendered(page) -> dict:
    """What the viewport's canvas shows now: how many pixels are lit, and a digest that changes with the image."""
    canvas = page.locator("[data-cy='viewport-pane'] canvas.cornerstone-canvas").first
    page.wait_for_function(f"c => ({CANVAS_PIXELS})(c).lit > 0", arg=canvas.element_handle())
    return canvas.evaluate(CANVAS_PIXELS)


def position(page):
    return page.locator("[data-cy='viewport-pane'] [data-cy='viewport-overlay-bottom-right']").first


def scroll_to(page, n: int, of: int, before: dict) -> dict:
    """One wheel notch down on the viewport: the overlay says image n of `of`, and the canvas shows another image."""
    page.locator("[data-cy='viewport-pane']").first.hover()
    page.mouse.wheel(0, 120)
    expect(position(page)).to_contain_text(f"({n}/{of})")
    page.wait_for_function(
        f"([c, d]) => ({CANVAS_PIXELS})(c).digest !== d",
        arg=[
            page.locator("[data-cy='viewport-pane'] canvas.cornerstone-canvas").first.element_handle(),
            before["digest"],
        ],
    )
    return rendered(page)


def test_ohif_lists_opens_renders_and_scrolls_a_study(ohif_viewer, portal_url, page, tenant_a, radiologist_a):
    ARTIFACTS.mkdir(exist_ok=True)
    common = {
        "patient_name": "OHIF^OLIVIA", "patient_id": "MRN-OHIF", "study_description": "OHIF interop",
        "accession": "OH-1", "rows": 128, "columns": 128,
    }  # fmt: skip
    # Series 1: a CT volume of SLICES single-frame instances, enough for the viewer to fetch frames in parallel.
    files = with_geometry(make_study(series=1, instances_per_series=SLICES, **common))
    study_uid = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    # Series 2: one multi-frame instance of 5 frames, RLE Lossless (the viewer asks for frames 1..5 of it and
    # decodes them itself).
    files.append(make_instance(study_uid=study_uid, series_number=2, series_description="Synthetic series 2",
                               frames=5, transfer_syntax=RLELossless, **common))  # fmt: skip
    with tenant_scope(tenant_a):
        batch = uuid.uuid4()
        for data in files:
            item = study_services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data)
            item.refresh_from_db()
            assert item.instance is not None, item.reason
        study = Study.objects.get()
        series = list(study.series.order_by("series_number"))
    answers: list[tuple[int, str, str]] = []
    failed: list[str] = []
    searches: list = []

    def answered(response) -> None:
        if "/dicomweb/" in response.url:
            answers.append((response.status, response.request.method, response.url))
            if "/studies?" in response.url and response.status == 200:
                searches.append(response)

    page.on("response", answered)
    page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}") if "/dicomweb/" in r.url else None)
    page.set_default_timeout(30_000)

    # The study list, searched by QIDO-RS with the token.
    page.goto(ohif_viewer.url + "/")
    row = page.get_by_role("row").filter(has_text="OHIF, OLIVIA")
    expect(row).to_contain_text("OHIF interop")
    expect(row).to_contain_text("CT")
    expect(row).to_contain_text(str(SLICES + 1))
    # The list's patient filter: OHIF adds wildcards (PatientName=*nobody*), and no match is no row.
    patient_filter = page.locator("input").first
    patient_filter.fill("nobody")
    expect(row).to_have_count(0)
    patient_filter.fill("olivia")
    expect(row).to_have_count(1)
    # The search answers name the study's WADO-RS address at the port the portal really serves.
    retrieve_urls = [item["00081190"]["Value"][0] for item in searches[-1].json()]
    assert retrieve_urls == [f"{portal_url}/dicomweb/{tenant_a.slug}/studies/{study.study_instance_uid}"]
    row.click()
    expect(page.get_by_text("Synthetic series 2")).to_be_visible()
    page.get_by_role("button", name="Basic Viewer").click()
    page.wait_for_url(re.compile(rf"/viewer\?StudyInstanceUIDs={re.escape(study.study_instance_uid)}"))
    # OHIF's first-visit tour and its investigational-use notice cover the viewer: dismissed as a person would.
    page.get_by_text("Skip all").click()
    page.get_by_role("button", name="Confirm and hide").click()
    expect(page.locator(".shepherd-modal-is-visible")).to_have_count(0)

    # Both series' thumbnails, rendered by the portal's WADO-RS thumbnail resource.
    thumbnails = page.locator("[data-cy='study-browser-thumbnail']")
    expect(thumbnails).to_have_count(2)
    for n, thumbnail in enumerate(thumbnails.all(), start=1):
        expect(thumbnail).to_contain_text(f"Synthetic series {n}")
        page.wait_for_function(THUMBNAIL_LOADED, arg=thumbnail.locator("img").element_handle())
    # The volume's geometry came through the metadata intact: OHIF flags the multi-frame series, which has none,
    # and has nothing to warn about on series 1.
    expect(thumbnails.nth(1).locator("[id^='display-set-tooltip-']")).to_have_count(1)
    expect(thumbnails.first.locator("[id^='display-set-tooltip-']")).to_have_count(0)

    # The first series is rendered on the canvas, then scrolled through.
    expect(page.locator("[data-cy='viewport-pane'] [data-cy='viewport-overlay-top-left']").first).to_contain_text(
        "Synthetic series 1"
    )
    expect(position(page)).to_contain_text(f"(1/{SLICES})")
    first = rendered(page)
    assert first["lit"] > first["total"] // 10, first
    shown = [first["digest"]]
    for n in (2, 3, 4):
        shown.append(scroll_to(page, n, SLICES, {"digest": shown[-1]})["digest"])
    page.screenshot(path=str(ARTIFACTS / "ohif-series-1.png"))

    # The second series, opened from its thumbnail, rendered and scrolled.
    thumbnails.nth(1).dblclick()
    expect(page.locator("[data-cy='viewport-pane'] [data-cy='viewport-overlay-top-left']").first).to_contain_text(
        "Synthetic series 2"
    )
    expect(position(page)).to_contain_text("(1/5)")
    second = rendered(page)
    assert second["lit"] > second["total"] // 10, second
    scroll_to(page, 2, 5, second)
    page.screenshot(path=str(ARTIFACTS / "ohif-series-2.png"))

    # Every DICOMweb request went to the portal's real port and none was refused or failed.
    assert answers, "the viewer made no DICOMweb request"
    assert all(url.startswith(f"{portal_url}/dicomweb/{tenant_a.slug}/") for _, _, url in answers), answers
    assert [a for a in answers if a[0] >= 400] == []
    # The viewer cancels prefetches it no longer needs when the series changes (net::ERR_ABORTED, its own doing);
    # anything else (a CORS refusal is net::ERR_FAILED) is a fault.
    assert [f for f in failed if not f.endswith("net::ERR_ABORTED")] == []
    frame_urls = [url for status, method, url in answers if method == "GET" and "/frames/" in url]
    for s in series:
        assert any(f"/series/{s.series_instance_uid}/instances/" in url for url in frame_urls), s.series_number
    assert any(url.endswith("/metadata") for _, _, url in answers)
    thumbnail_urls = [url for status, method, url in answers if "/thumbnail" in url]
    for s in series:
        assert any(f"/series/{s.series_instance_uid}/" in url for url in thumbnail_urls), s.series_number

    # The trail holds the reads: the searches, the metadata, and every frame and thumbnail the browser received
    # (the opening event of the folding window plus the reads folded into it).
    with tenant_scope(tenant_a):
        mine = AuditEvent.objects.filter(actor_username=radiologist_a.username)
        assert mine.filter(event_type=EventType.STUDIES_QUERIED).count() >= 2
        reads = mine.filter(event_type=EventType.INSTANCES_ACCESSED, outcome=Outcome.SUCCESS).filter(
            participants__contains=[{"type": "study", "id": study.study_instance_uid}]
        )
        assert reads.filter(extra__kind="metadata").count() >= 2
        opened = reads.filter(extra__kind__in=["frames", "rendered", "thumbnail"]).count()
        folded = sum(ReadTally.objects.filter(user=radiologist_a, study=study).values_list("folded", flat=True))
        assert opened >= 1
        viewed = [url for status, _, url in answers if status == 200 and ("/frames/" in url or "/thumbnail" in url)]
        assert opened + folded >= len(viewed)
        assert not AuditEvent.objects.filter(outcome__gt=Outcome.SUCCESS).exists()
