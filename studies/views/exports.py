"""Export pages under /t/<tenant>/:

- `studies/<public_id>/export/`: ask for an export of one study (a member who sees the study);
- `exports/search/`: ask for an export of a study search result (POST with the study list's filters);
- `exports/<public_id>/`: the export's progress bar (static/js/export.js polls `status.json`), for its owner
  while they may still have the export (re-checked at every request, as the download is);
- `exports/<public_id>/download/`: the zip, once, for its owner while they may still see every study in it;
  after that 410 Gone.

An export belongs to the person who asked for it: anyone else gets the same 404 as for a missing export. Asking
for one is for members whose role sees images (403 and ACCESS_DENIED otherwise); the export page names the
patient, so each showing of it is recorded first.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from portal.web.pages import TenantPageView
from studies import services
from studies.dicom.deidentify import MODIFIED_DATES, OPTION_MEANINGS, RETAIN_DEVICE_IDENTITY
from studies.forms import StudySearchForm
from studies.models import Export, Study
from studies.selectors import study_get, study_list
from studies.services.exports import MAX_STUDIES
from studies.services.page_reads import study_pages_read_record
from studies.views.common import form_errors_into, person_name, require_image_access
from tenants import access


class ExportForm(forms.Form):
    kind = forms.ChoiceField(choices=Export.Kind.choices, initial=Export.Kind.DEIDENTIFIED, widget=forms.RadioSelect)
    modified_dates = forms.BooleanField(
        required=False,
        label="Keep intervals between dates (dates shifted per patient; " + OPTION_MEANINGS[MODIFIED_DATES] + ")",
    )
    device_identity = forms.BooleanField(
        required=False, label="Keep device identity (station name, serial numbers; Retain Device Identity Option)"
    )
    encrypted = forms.BooleanField(
        required=False,
        label="Protect the zip with a password (AES-256; the password is shown once, on the next page)",
    )
    purpose = forms.CharField(required=False, max_length=500, label="Purpose (identified exports)")
    recipient = forms.CharField(required=False, max_length=300, label="Recipient (identified exports)")

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        options = [
            code
            for code, on in (
                (MODIFIED_DATES, data["modified_dates"]),
                (RETAIN_DEVICE_IDENTITY, data["device_identity"]),
            )
            if on
        ]
        return {
            "kind": data["kind"], "options": options, "purpose": data["purpose"], "recipient": data["recipient"],
            "encrypted": data["encrypted"],
        }  # fmt: skip


class ExportSearchForm(StudySearchForm, ExportForm):
    """The study list's filters plus the export's choices: exports every study the search finds."""


class _ExportRequestMixin(TenantPageView):
    rate_limit = "export"
    template: str

    def _show(self, request: HttpRequest, ctx: dict[str, Any], form: forms.Form, status: int = 200) -> HttpResponse:
        return self.render(request, self.template, {**ctx, "form": form}, status=status)

    def _request(
        self, request: HttpRequest, form: ExportForm, studies: list[Study], ctx: dict[str, Any]
    ) -> HttpResponse:
        try:
            export = services.export_request(actor=request.user, studies=studies, **form.service_arguments())
        except ValidationError as exc:
            form_errors_into(form, exc)
            return self._show(request, ctx, form, status=400)
        if export.encrypted:
            # The password, once: on this answer only (not stored, not in a URL, not cached), never again.
            response = self.render(request, "studies/export_password.html", {"export": export}, status=201)
            response["Cache-Control"] = "no-store"
            return response
        return redirect("portal:export_progress", tenant=self.tenant.slug, public_id=export.public_id)


class StudyExportView(_ExportRequestMixin):
    """/t/<tenant>/studies/<public_id>/export/ : a member who sees the study; identified exports also need
    `tenants.export_identified` (403 and an ACCESS_DENIED event without it). The page names the patient, so
    each showing of it is recorded first (`study_pages_read_record`)."""

    template = "studies/export_request.html"

    def _context(self, study: Study) -> dict[str, Any]:
        return {
            "study": study,
            "patient_name": person_name(study.patient.name),
            "can_identify": "tenants.export_identified" in self.perms,
        }

    def _show(self, request: HttpRequest, ctx: dict[str, Any], form: forms.Form, status: int = 200) -> HttpResponse:
        study_pages_read_record(
            actor=request.user,
            studies=[ctx["study"]],
            kind="export page",
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
        return super()._show(request, ctx, form, status)

    def get(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        require_image_access(self)
        study = study_get(actor=request.user, public_id=public_id)
        return self._show(request, self._context(study), ExportForm())

    def post(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        require_image_access(self)
        study = study_get(actor=request.user, public_id=public_id)
        form = ExportForm(request.POST)
        ctx = self._context(study)
        if not form.is_valid():
            return self._show(request, ctx, form, status=400)
        return self._request(request, form, [study], ctx)


class SearchExportView(_ExportRequestMixin):
    """/t/<tenant>/exports/search/ : export every study a search finds (at most MAX_STUDIES)."""

    template = "studies/export_search.html"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        require_image_access(self)
        ctx = {"max_studies": MAX_STUDIES, "can_identify": "tenants.export_identified" in self.perms}
        return self._show(request, ctx, ExportSearchForm())

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        require_image_access(self)
        form = ExportSearchForm(request.POST)
        ctx = {"max_studies": MAX_STUDIES, "can_identify": "tenants.export_identified" in self.perms}
        if not form.is_valid():
            return self._show(request, ctx, form, status=400)
        studies = list(study_list(actor=request.user, **form.selector_filters())[: MAX_STUDIES + 1])
        return self._request(request, form, studies, ctx)


def _own_export(request: HttpRequest, public_id: str) -> Export:
    try:
        export = Export.objects.get(public_id=public_id)
    except (Export.DoesNotExist, ValueError, ValidationError) as exc:
        raise access.NotVisible() from exc
    services.export_owner_check(actor=request.user, export=export)
    return export


def _shown_export(request: HttpRequest, public_id: str, phase: str) -> Export:
    """The export for its progress page or status poll: its owner, while still allowed to have it (asked again
    at every request, as the download does); otherwise the 404 of a missing export, recorded for the owner."""
    export = _own_export(request, public_id)
    services.export_shown_check(actor=request.user, export=export, phase=phase)
    return export


def _status(export: Export, tenant_slug: str) -> dict[str, Any]:
    ready = export.state == Export.State.DONE and export.downloaded_at is None
    return {
        "state": export.state,
        "done": export.done,
        "total": export.total,
        "percent": export.percent,
        "error": export.error,
        "downloaded": export.downloaded_at is not None,
        "download_url": reverse("portal:export_download", kwargs={"tenant": tenant_slug, "public_id": export.public_id})
        if ready
        else "",
    }


class ExportProgressView(TenantPageView):
    """/t/<tenant>/exports/<public_id>/ : the owner's progress page, while they may still have the export."""

    def get(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        export = _shown_export(request, public_id, "progress refused")
        ctx = {"export": export, "status": _status(export, self.tenant.slug)}
        return self.render(request, "studies/export_progress.html", ctx)


class ExportStatusView(TenantPageView):
    """/t/<tenant>/exports/<public_id>/status.json : what the progress bar polls (the same re-check)."""

    def get(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        export = _shown_export(request, public_id, "status refused")
        return JsonResponse(_status(export, self.tenant.slug), headers={"Cache-Control": "no-store"})


class ExportDownloadView(TenantPageView):
    """/t/<tenant>/exports/<public_id>/download/ : the zip, once (then 410 Gone); not the owner, or no longer
    allowed to have it (`services.export_download_once` asks tenants.access again): 404."""

    rate_limit = "retrieve"

    def get(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        export = _own_export(request, public_id)
        try:
            data = services.export_download_once(actor=request.user, export=export)
        except services.ExportGone:
            return self.render(request, "studies/export_gone.html", {"export": export}, status=410)
        except services.ExportNotReady as exc:
            raise Http404() from exc
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="export-{export.public_id}.zip"'
        response["Cache-Control"] = "no-store"
        return response
