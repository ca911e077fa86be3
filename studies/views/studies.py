"""The study list with search, and series thumbnails, under /t/<tenant>/.

Patient data never goes into the URLs of these pages: the study search is a POST whose results are the POST's
own response (no redirect to a query string), and paging is a POST too.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse

from portal.web.pages import TenantPageView
from studies.forms import StudySearchForm
from studies.models import Study
from studies.selectors import series_get, study_list
from studies.services.page_reads import study_list_shown_record
from studies.services.reads import instances_accessed_record
from studies.storage.blobs import blob_read
from studies.views.common import person_name, require_image_access

STUDIES_PAGE_SIZE = 25


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


class StudiesView(TenantPageView):
    """/t/<tenant>/studies/ : the studies the member may see, newest first, with a search by patient, accession
    or description, modality and dates. The search and its pages are POSTs (patient data stays out of URLs);
    every list shown is one STUDIES_QUERIED audit event with its filters, the result count and the studies shown.
    Members whose role sees no images get a 403 (`require_image_access`).
    """

    rate_limit = "search"

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
        study_list_shown_record(
            actor=request.user,
            tenant=self.tenant,
            resource=request.path,
            filters=recorded,
            results=paginator.count,
            page=page_obj.number,
            studies=studies,
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
    study; 404 otherwise (another tenant's series is the same as a missing one). Never cached (middleware).
    Each read is an INSTANCES_ACCESSED event (folded with the study's other image reads), written first."""

    rate_limit = "retrieve"

    def get(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        require_image_access(self)
        series = series_get(actor=request.user, public_id=public_id)
        if series.thumbnail is None:
            raise Http404()
        data = blob_read(blob=series.thumbnail)
        instances_accessed_record(
            actor=request.user,
            study=series.study,
            kind="thumbnail",
            count=1,
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
        return HttpResponse(data, content_type="image/png")
