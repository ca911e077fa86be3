"""The study page under /t/<tenant>/:

- `studies/<public_id>/`: the patient and the study, its series with thumbnails, and a frame viewer
  (static/js/viewer.js). The page hands the script the series and instances as a JSON data block (not inline
  script: the CSP allows it); the script asks our WADO-RS `/rendered` endpoint for each frame as a PNG, with the
  member's MFA session. Opening the page is one INSTANCES_ACCESSED event; every frame read is audited (and
  folded) by the WADO-RS endpoint itself.
- `studies/<public_id>/history/`: the study's access history (reads, shares, break-glass, exports), newest
  first, for whoever sees the study; reading it is an AUDIT_LOG_USED event.

Both are only for members who see the study (`studies.selectors.study_get`): anyone else gets the same 404 as
for a missing study, another tenant's study included. Members whose role sees no images get a 403 (recorded as
ACCESS_DENIED) before any study is looked up, for a real study and a made-up one alike.
"""

from __future__ import annotations

import uuid
from typing import Any, TypedDict

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from audit.events import Outcome
from audit.selectors import audit_events_for_study
from portal.web.pages import TenantPageView
from studies.models import Series, Study
from studies.selectors import series_list_for_study, study_get
from studies.services.page_reads import study_history_read_record
from studies.services.reads import instances_accessed_record
from studies.views.common import person_name, require_image_access
from tenants.models import Role

HISTORY_SIZE = 50
SEX_LABELS = {"M": "Male", "F": "Female", "O": "Other"}  # Patient's Sex (0010,0040)

# Window presets (center, width) in Hounsfield units; "default" is the file's own window.
WINDOW_PRESETS = [
    ("default", "Default", None, None),
    ("soft-tissue", "Soft tissue", 40, 400),
    ("lung", "Lung", -600, 1500),
    ("bone", "Bone", 300, 1500),
    ("brain", "Brain", 40, 80),
]


class _SeriesRow(TypedDict):
    series: Series
    thumbnail: str
    images: int
    data: dict[str, Any]


def _series_json(tenant_slug: str, study: Study, series: Series, thumbnail_url: str) -> dict[str, Any]:
    """One series for the viewer: its instances that have pixels, each as its WADO-RS URL (the script adds
    `/frames/<n>/rendered` and the window) and its number of frames."""
    instances = []
    for instance in series.instances.all():  # prefetched, in instance order
        if not instance.rows:  # a report or key object: nothing to render
            continue
        url = reverse(
            "dicomweb:instance",
            kwargs={
                "tenant": tenant_slug,
                "study": study.study_instance_uid,
                "series": series.series_instance_uid,
                "instance": instance.sop_instance_uid,
            },
        )
        instances.append({"url": url, "number": instance.instance_number, "frames": max(1, instance.frames)})
    return {
        "id": str(series.public_id),
        "number": series.series_number,
        "modality": series.modality,
        "description": series.description,
        "thumbnail": thumbnail_url,
        "instances": instances,
    }


class StudyView(TenantPageView):
    """/t/<tenant>/studies/<public_id>/ : the study page and its frame viewer."""

    rate_limit = "retrieve"

    def get(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        require_image_access(self)
        study = study_get(actor=request.user, public_id=public_id)
        slug = self.tenant.slug
        rows: list[_SeriesRow] = []
        for series in series_list_for_study(actor=request.user, study=study):
            thumbnail = (
                reverse("portal:series_thumbnail", kwargs={"tenant": slug, "public_id": series.public_id})
                if series.thumbnail_id is not None
                else ""
            )
            data = _series_json(slug, study, series, thumbnail)
            rows.append({"series": series, "thumbnail": thumbnail, "images": len(data["instances"]), "data": data})
        instances_accessed_record(
            actor=request.user,
            study=study,
            kind="study page",
            count=sum(len(row["series"].instances.all()) for row in rows),
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
        context = {
            "study": study,
            "patient_name": person_name(study.patient.name),
            "patient_sex": SEX_LABELS.get(study.patient.sex, study.patient.sex),
            "referring_physician": person_name(study.referring_physician),
            "modalities": ", ".join(m for m in study.modalities.split("\\") if m),
            "series_rows": rows,
            "viewer": {"series": [row["data"] for row in rows if row["images"]]},
            "presets": WINDOW_PRESETS,
            "can_share": "tenants.share_studies" in self.perms,
        }
        return self.render(request, "studies/study.html", context)


def _history_row(event: Any) -> dict[str, Any]:
    extra = event.extra or {}
    return {
        "event": event,
        "verb": event.verb,
        "kind": extra.get("kind", ""),
        "count": extra.get("count"),
        "role": Role(event.actor_role).label if event.actor_role in Role.values else event.actor_role,
        "ok": event.outcome == Outcome.SUCCESS,
    }


class StudyHistoryView(TenantPageView):
    """/t/<tenant>/studies/<public_id>/history/ : who read the study, shared it, opened it in an emergency or
    exported it, newest first (the last HISTORY_SIZE events). Each view of it is an AUDIT_LOG_USED event."""

    def get(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        require_image_access(self)
        study = study_get(actor=request.user, public_id=public_id)
        events = list(audit_events_for_study(actor=request.user, study=study)[:HISTORY_SIZE])
        study_history_read_record(
            actor=request.user, tenant=self.tenant, study=study, resource=request.path, results=len(events)
        )
        context = {
            "study": study,
            "patient_name": person_name(study.patient.name),
            "rows": [_history_row(event) for event in events],
            "limit": HISTORY_SIZE,
        }
        return self.render(request, "studies/study_history.html", context)
