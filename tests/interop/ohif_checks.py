"""What both OHIF tests share: the study OHIF is shown, the build and its server, and the walk through the viewer
in Chromium with the checks on every DICOMweb request the browser made. tests/interop/test_ohif.py runs it against
pytest's live server (the fast developer version), tests/journey/test_make_run.py against `make run` itself."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import expect
from pydicom.uid import RLELossless

from studies.dicom.synthetic import make_instance, make_study
from tests.interop.ohif_script import SCRIPT, ohif

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SLICES = 24

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


def ohif_build() -> Path:
    """The OHIF build, fetched once into the cache (scripts/ohif.py). The interop is part of what the suite proves,
    so a build that cannot be had fails the test with the reason, as a missing Chromium does; it is never skipped."""
    try:
        return ohif.fetch()
    except ohif.FetchError as exc:
        pytest.fail(f"no OHIF build: nothing cached under {ohif.cache_root()} and the npm fetch failed: {exc}")


@contextmanager
def ohif_served(*, portal: str, tenant: str, token: str, log: Path, port: int = 0) -> Iterator[str]:
    """`scripts/ohif.py serve` as the README runs it, on `port` (0: a free one); yields the viewer's origin."""
    env = {**os.environ, "OHIF_TOKEN": token}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    command = [sys.executable, str(SCRIPT), "serve", "--port", str(port), "--portal", portal, "--tenant", tenant]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=out, env=env, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"scripts/ohif.py serve said {line!r}; log: {log.read_text()}"
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass(frozen=True)
class OhifStudy:
    """The study OHIF is shown: a CT volume of SLICES slices and one multi-frame RLE instance of 5 frames."""

    patient_name: str  # DICOM PN, FAMILY^GIVEN
    patient_id: str
    accession: str
    description: str
    files: list[bytes] = field(repr=False)

    @property
    def study_uid(self) -> str:
        return str(pydicom.dcmread(io.BytesIO(self.files[0])).StudyInstanceUID)

    @property
    def listed_as(self) -> str:
        """The patient as OHIF's study list shows the name: "FAMILY, GIVEN"."""
        return ", ".join(self.patient_name.split("^"))

    @property
    def instances(self) -> int:
        return len(self.files)


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


def ohif_study(*, patient_name: str, patient_id: str, accession: str, description: str) -> OhifStudy:
    common = {
        "patient_name": patient_name, "patient_id": patient_id, "study_description": description,
        "accession": accession, "rows": 128, "columns": 128,
    }  # fmt: skip
    # Series 1: a CT volume of SLICES single-frame instances, enough for the viewer to fetch frames in parallel.
    files = with_geometry(make_study(series=1, instances_per_series=SLICES, **common))
    study_uid = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    # Series 2: one multi-frame instance of 5 frames, RLE Lossless (the viewer asks for frames 1..5 of it and
    # decodes them itself).
    files.append(make_instance(study_uid=study_uid, series_number=2, series_description="Synthetic series 2",
                               frames=5, transfer_syntax=RLELossless, **common))  # fmt: skip
    return OhifStudy(patient_name, patient_id, accession, description, files)


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


@dataclass
class Recorded:
    """Every DICOMweb answer the browser received (status, method, URL) and every DICOMweb request that failed."""

    answers: list[tuple[int, str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    searches: list = field(default_factory=list)

    def listen(self, page) -> None:
        def answered(response) -> None:
            if "/dicomweb/" in response.url:
                self.answers.append((response.status, response.request.method, response.url))
                if "/studies?" in response.url and response.status == 200:
                    self.searches.append(response)

        page.on("response", answered)
        page.on(
            "requestfailed", lambda r: self.failed.append(f"{r.url} {r.failure}") if "/dicomweb/" in r.url else None
        )


def walk_the_viewer(
    page, *, viewer: str, portal: str, tenant: str, study: OhifStudy, series_uids: list[str], artifacts: str = "ohif"
) -> Recorded:
    """The study list shows the study (and OHIF's patient filter finds it), the study opens in the Basic Viewer,
    both series' thumbnails load, each series renders and scrolls; then every DICOMweb request went to the portal's
    real port and none was answered 4xx or 5xx or failed (bar the viewer's own cancellations)."""
    ARTIFACTS.mkdir(exist_ok=True)
    recorded = Recorded()
    recorded.listen(page)
    page.set_default_timeout(30_000)

    # The study list, searched by QIDO-RS with the token.
    page.goto(viewer + "/")
    row = page.get_by_role("row").filter(has_text=study.listed_as)
    expect(row).to_contain_text(study.description)
    expect(row).to_contain_text("CT")
    expect(row).to_contain_text(str(study.instances))
    # The list's patient filter: OHIF adds wildcards (PatientName=*nobody*), and no match is no row.
    patient_filter = page.locator("input").first
    patient_filter.fill("nobody")
    expect(row).to_have_count(0)
    patient_filter.fill(study.patient_name.split("^")[-1].lower())
    expect(row).to_have_count(1)
    # The search answers name the study's WADO-RS address at the port the portal really serves.
    retrieve_urls = {
        item["0020000D"]["Value"][0]: item["00081190"]["Value"][0]
        for search in recorded.searches
        for item in search.json()
    }
    assert retrieve_urls.get(study.study_uid) == f"{portal}/dicomweb/{tenant}/studies/{study.study_uid}", [
        search.url for search in recorded.searches
    ]
    assert all(url == f"{portal}/dicomweb/{tenant}/studies/{uid}" for uid, url in retrieve_urls.items()), retrieve_urls
    row.click()
    expect(page.get_by_text("Synthetic series 2")).to_be_visible()
    page.get_by_role("button", name="Basic Viewer").click()
    page.wait_for_url(re.compile(rf"/viewer\?StudyInstanceUIDs={re.escape(study.study_uid)}"))
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
    top_left = page.locator("[data-cy='viewport-pane'] [data-cy='viewport-overlay-top-left']").first
    expect(top_left).to_contain_text("Synthetic series 1")
    expect(position(page)).to_contain_text(f"(1/{SLICES})")
    first = rendered(page)
    assert first["lit"] > first["total"] // 10, first
    shown = [first["digest"]]
    for n in (2, 3, 4):
        shown.append(scroll_to(page, n, SLICES, {"digest": shown[-1]})["digest"])
    page.screenshot(path=str(ARTIFACTS / f"{artifacts}-series-1.png"))

    # The second series, opened from its thumbnail, rendered and scrolled.
    thumbnails.nth(1).dblclick()
    expect(top_left).to_contain_text("Synthetic series 2")
    expect(position(page)).to_contain_text("(1/5)")
    second = rendered(page)
    assert second["lit"] > second["total"] // 10, second
    scroll_to(page, 2, 5, second)
    page.screenshot(path=str(ARTIFACTS / f"{artifacts}-series-2.png"))

    assert_dicomweb_clean(recorded, portal=portal, tenant=tenant, series_uids=series_uids)
    return recorded


def assert_dicomweb_clean(recorded: Recorded, *, portal: str, tenant: str, series_uids: list[str]) -> None:
    """Every DICOMweb request went to the portal's real port and none was refused or failed; each series' frames,
    thumbnail and the metadata were asked for."""
    answers = recorded.answers
    assert answers, "the viewer made no DICOMweb request"
    assert all(url.startswith(f"{portal}/dicomweb/{tenant}/") for _, _, url in answers), answers
    assert [a for a in answers if a[0] >= 400] == []
    # The viewer cancels prefetches it no longer needs when the series changes (net::ERR_ABORTED, its own doing);
    # anything else (a CORS refusal is net::ERR_FAILED) is a fault.
    assert [f for f in recorded.failed if not f.endswith("net::ERR_ABORTED")] == []
    frame_urls = [url for _, method, url in answers if method == "GET" and "/frames/" in url]
    thumbnail_urls = [url for _, _, url in answers if "/thumbnail" in url]
    for n, uid in enumerate(series_uids, start=1):
        assert any(f"/series/{uid}/instances/" in url for url in frame_urls), n
        assert any(f"/series/{uid}/" in url for url in thumbnail_urls), n
    assert any(url.endswith("/metadata") for _, _, url in answers)
