"""The upload door and the ingest activity under /t/<tenant>/.

The upload page's script (static/js/upload.js) sends one file per request to `upload/files/` and polls
`ingest/batch/<batch>/`; `ingest/` shows what came in through every door.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

from portal.web.pages import TenantPageView
from studies.forms import IngestFilterForm, UploadFileForm
from studies.models import IngestItem
from studies.selectors import ingest_item_list, ingest_state_counts, scanner_description
from studies.services import upload_receive
from studies.services.page_reads import ingest_items_shown_record

INGEST_PAGE_SIZE = 50


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
    max_request_bytes_setting = "UPLOAD_MAX_REQUEST_BYTES"  # portal.middleware.RequestSizeLimitMiddleware

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
    upload page to poll: only the items the requester sent (their own file names, nothing of anyone else's). A
    batch with none of theirs is a 404, whoever's it is."""

    required_permission = "tenants.upload_studies"

    def get(self, request: HttpRequest, tenant: str, batch: uuid.UUID) -> HttpResponse:
        mine = ingest_item_list(actor=request.user, batch=batch).filter(actor_id=request.user.pk)
        items = list(mine.order_by("created_at", "pk"))
        if not items:
            raise Http404()
        payload = [item_json(item) for item in items]
        return JsonResponse({"batch": str(batch), "items": payload, "done": all(i["final"] for i in payload)})


class IngestActivityView(TenantPageView):
    """/t/<tenant>/ingest/ : what came in through every door: counts by state, the latest items with their reason,
    a filter by state (a state name in the query string: no patient data), and which malware scanner runs. File
    names and reasons may name a patient: each page of items shown is recorded first
    (`ingest_items_shown_record`)."""

    required_permission = "tenants.upload_studies"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = IngestFilterForm(request.GET)
        valid = form.is_valid()
        state = form.cleaned_data.get("state", "") if valid else ""
        paginator = Paginator(ingest_item_list(actor=request.user, state=state), INGEST_PAGE_SIZE)
        page_obj = paginator.get_page(form.cleaned_data.get("page") if valid else 1)
        counts = ingest_state_counts(actor=request.user)
        items = list(page_obj.object_list)
        ingest_items_shown_record(
            actor=request.user,
            tenant=self.tenant,
            items=items,
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
        context = {
            "form": form,
            "state": state,
            "counts": [(value, label, counts.get(value, 0)) for value, label in IngestItem.State.choices],
            "total": sum(counts.values()),
            "page_obj": page_obj,
            "items": items,
            "scanner": scanner_description(),
            "clamd": bool(settings.CLAMD_ADDRESS),
        }
        return self.render(request, "studies/ingest.html", context, status=200 if valid else 400)
