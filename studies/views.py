"""Pages of the archive under /t/<tenant>/: the upload door, the study list with search, series thumbnails and
the ingest activity.

Patient data never goes into the URLs of these pages: the study search is a POST whose results are the POST's
own response (no redirect to a query string), and paging is a POST too. The upload page's script
(static/js/upload.js) sends one file per request to `upload/files/` and polls `ingest/batch/<batch>/`.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

from audit.events import EventType
from audit.services import audit_event_record
from portal.web.pages import TenantPageView
from studies.forms import IngestFilterForm, StudySearchForm, UploadFileForm
from studies.models import IngestItem, Study
from studies.selectors import ingest_item_list, ingest_state_counts, scanner_description, series_get, study_list
from studies.services import upload_receive
from studies.storage.blobs import blob_read
from tenants import access

STUDIES_PAGE_SIZE = 25
INGEST_PAGE_SIZE = 50


def person_name(value: str) -> str:
    """A DICOM person name (Family^Given^Middle^Prefix^Suffix, alphabetic group first) as people write it."""
    parts = [part.strip() for part in value.split("=")[0].split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = f"{family}, {first}" if family and first else family or first
    return f"{name}, {suffix}" if suffix else name


def item_json(item: IngestItem) -> dict[str, Any]:
    return {
        "id": str(item.public_id),
        "filename": item.filename,
        "state": item.state,
        "state_label": item.get_state_display(),
        "reason": item.reason,
        "final": item.state in IngestItem.FINAL_STATES,
    }


class UploadView(TenantPageView):
    """/t/<tenant>/upload/ : choose files, a folder or a zip; each file's progress and each item's state live.
    One batch per visit, made here and carried by the page."""

    required_permission = "tenants.upload_studies"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        batch = uuid.uuid4()
        context = {
            "batch": batch,
            "post_url": reverse("portal:upload_files", kwargs={"tenant": self.tenant.slug}),
            "status_url": reverse("portal:ingest_batch", kwargs={"tenant": self.tenant.slug, "batch": batch}),
            "max_bytes": settings.INGEST_MAX_BYTES,
            "max_upload": max(settings.INGEST_MAX_BYTES, settings.INGEST_ZIP_MAX_UNPACKED_BYTES),
            "scanner": scanner_description(),
        }
        return self.render(request, "studies/upload.html", context)


class UploadFilesView(TenantPageView):
    """POST /t/<tenant>/upload/files/ : one file (or zip) of a batch; JSON with the ingest items it made."""

    required_permission = "tenants.upload_studies"
    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = UploadFileForm(request.POST, request.FILES)
        if not form.is_valid():
            errors = {field: [str(e) for e in errs] for field, errs in form.errors.items()}
            return JsonResponse({"error": "The upload is incomplete.", "fields": errors}, status=400)
        batch = form.cleaned_data["batch"]
        items = upload_receive(
            actor=request.user,
            batch=batch,
            filename=form.filename(),
            data=form.cleaned_data["file"],
            source_address=request.META.get("REMOTE_ADDR"),
        )
        # Read back: with eager tasks (the embedded default) processing has already finished.
        ids = [item.pk for item in items]
        current = {item.pk: item for item in ingest_item_list(actor=request.user, batch=batch).filter(pk__in=ids)}
        return JsonResponse(
            {"batch": str(batch), "items": [item_json(current.get(item.pk, item)) for item in items]}, status=201
        )


class IngestBatchView(TenantPageView):
    """GET /t/<tenant>/ingest/batch/<batch>/ : JSON with the state of every item of an upload batch, for the
    upload page to poll. A batch with no item here is a 404, whoever's it is."""

    required_permission = "tenants.upload_studies"

    def get(self, request: HttpRequest, tenant: str, batch: uuid.UUID) -> HttpResponse:
        items = list(ingest_item_list(actor=request.user, batch=batch).order_by("created_at", "pk"))
        if not items:
            raise Http404()
        payload = [item_json(item) for item in items]
        return JsonResponse({"batch": str(batch), "items": payload, "done": all(i["final"] for i in payload)})


def study_row(study: Study) -> dict[str, Any]:
    series = list(study.series.all())  # prefetched, in series order
    with_thumbnail = next((s for s in series if s.thumbnail_id is not None), None)
    return {
        "study": study,
        "patient_name": person_name(study.patient.name),
        "patient_id": study.patient.patient_id,
        "modalities": ", ".join(m for m in study.modalities.split("\\") if m),
        "thumbnail_series": with_thumbnail.public_id if with_thumbnail is not None else None,
    }


def require_image_access(view: TenantPageView) -> None:
    """403 (and an ACCESS_DENIED event, through TenantPageView) for members whose role sees no images: the
    study list and thumbnails are for radiologists, technologists and referring physicians
    (`access.may_see_images`); which studies each sees is still `study_list`'s answer."""
    if not access.may_see_images(view.request.user, view.tenant):
        raise access.Forbidden()


class StudiesView(TenantPageView):
    """/t/<tenant>/studies/ : the studies the member may see, newest first, with a search by patient, accession
    or description, modality and dates. The search and its pages are POSTs (patient data stays out of URLs);
    every list shown is one STUDIES_QUERIED audit event with its filters, the result count and the studies shown.
    Members whose role sees no images get a 403 (`require_image_access`).
    """

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        require_image_access(self)
        return self._list(request, StudySearchForm(), {})

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        require_image_access(self)
        form = StudySearchForm(request.POST)
        if not form.is_valid():
            context = {"form": form, "rows": [], "page_obj": None, "searched": True}
            return self.render(request, "studies/studies.html", context, status=400)
        return self._list(request, form, form.cleaned_data)

    def _list(self, request: HttpRequest, form: StudySearchForm, data: dict[str, Any]) -> HttpResponse:
        filters = form.selector_filters() if form.is_bound else {}
        recorded = form.recorded_filters() if form.is_bound else {}
        paginator = Paginator(study_list(actor=request.user, **filters), STUDIES_PAGE_SIZE)
        page_obj = paginator.get_page(data.get("page") or 1)
        studies = list(page_obj.object_list)
        audit_event_record(
            event=EventType.STUDIES_QUERIED,
            actor=request.user,
            tenant=self.tenant,
            target={"type": "query", "id": request.path, "name": f"Study list of {self.tenant.slug}"},
            extra={
                "filters": recorded,
                "results": paginator.count,
                "page": page_obj.number,
                "shown": [str(study.public_id) for study in studies],
            },
        )
        context = {
            "form": form,
            "rows": [study_row(study) for study in studies],
            "page_obj": page_obj,
            "applied": recorded,  # the pager's forms carry the filters of this list, not what was typed since
            "searched": bool(recorded),
        }
        return self.render(request, "studies/studies.html", context)


class SeriesThumbnailView(TenantPageView):
    """/t/<tenant>/series/<series>/thumbnail.png : the series' thumbnail, decrypted, for members who see its
    study; 404 otherwise (another tenant's series is the same as a missing one). Never cached (middleware)."""

    def get(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        require_image_access(self)
        series = series_get(actor=request.user, public_id=public_id)
        if series.thumbnail is None:
            raise Http404()
        return HttpResponse(blob_read(blob=series.thumbnail), content_type="image/png")


class IngestActivityView(TenantPageView):
    """/t/<tenant>/ingest/ : what came in through every door: counts by state, the latest items with their reason,
    a filter by state (a state name in the query string: no patient data), and which malware scanner runs."""

    required_permission = "tenants.upload_studies"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = IngestFilterForm(request.GET)
        valid = form.is_valid()
        state = form.cleaned_data.get("state", "") if valid else ""
        paginator = Paginator(ingest_item_list(actor=request.user, state=state), INGEST_PAGE_SIZE)
        page_obj = paginator.get_page(form.cleaned_data.get("page") if valid else 1)
        counts = ingest_state_counts(actor=request.user)
        context = {
            "form": form,
            "state": state,
            "counts": [(value, label, counts.get(value, 0)) for value, label in IngestItem.State.choices],
            "total": sum(counts.values()),
            "page_obj": page_obj,
            "items": list(page_obj.object_list),
            "scanner": scanner_description(),
            "clamd": bool(settings.CLAMD_ADDRESS),
        }
        return self.render(request, "studies/ingest.html", context, status=200 if valid else 400)
