"""The OHIF Viewer 3, as published on npm (@ohif/app), against the portal: configured as the README says
(scripts/ohif.py writes app-config.js with the bearer token set through OHIF's user-authentication service and the
portal's real port), served statically on another origin, and driven in Debian's Chromium. The study list shows the
study, the viewer shows both series' thumbnails and renders and scrolls a series; no DICOMweb request the browser
makes is answered 4xx or 5xx, and the audit trail holds the reads.

This is the fast developer version, against pytest's live server; tests/journey/test_make_run.py walks the same
viewer against `make run` (tests/interop/ohif_checks.py holds what both share)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from studies import services as study_services
from studies.models import IngestItem, ReadTally, Study
from tenants import services
from tenants.scoping import tenant_scope
from tests.interop.ohif_checks import ohif_build, ohif_served, ohif_study, walk_the_viewer

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    return ohif_build()


@pytest.fixture
def portal_url(live_server, settings) -> str:
    """The URL the portal really serves on. PORTAL_BASE_URL keeps a port the portal does not serve on, so nothing
    the viewer is given may come from it."""
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
    with ohif_served(portal=portal_url, tenant=tenant_a.slug, token=token, log=log) as url:
        settings.DICOMWEB_CORS_ORIGINS = [url]
        yield Viewer(url=url, log=log)


def test_ohif_lists_opens_renders_and_scrolls_a_study(ohif_viewer, portal_url, page, tenant_a, radiologist_a):
    shown = ohif_study(patient_name="OHIF^OLIVIA", patient_id="MRN-OHIF", accession="OH-1",
                       description="OHIF interop")  # fmt: skip
    with tenant_scope(tenant_a):
        batch = uuid.uuid4()
        for data in shown.files:
            item = study_services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data)
            item.refresh_from_db()
            assert item.instance is not None, item.reason
        study = Study.objects.get()
        series_uids = list(study.series.order_by("series_number").values_list("series_instance_uid", flat=True))

    recorded = walk_the_viewer(
        page, viewer=ohif_viewer.url, portal=portal_url, tenant=tenant_a.slug, study=shown, series_uids=series_uids
    )

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
        viewed = [
            url for status, _, url in recorded.answers if status == 200 and ("/frames/" in url or "/thumbnail" in url)
        ]
        assert opened + folded >= len(viewed)
        assert not AuditEvent.objects.filter(outcome__gt=Outcome.SUCCESS).exists()
