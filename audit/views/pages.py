"""The tenant's audit browser: one list of audit events and field changes with its filters, keyset pages, the
detail of one entry, and the CSV export of any filtered view.

Reading the trail is itself on the trail (DICOM 110101 Audit Log Used, SECURITY.md B7), with the filters used.
Patient and study filters never travel in our URLs: the filter form is POSTed, kept in the session under an
opaque id, and the pages carry only that id (`?q=`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from audit.events import EventType, Outcome
from audit.selectors import (
    AUDIT_FILTER_YEARS,
    AUDIT_FILTER_YEARS_REASON,
    TrailCursor,
    TrailEntry,
    TrailFilters,
    audit_change_get,
    audit_event_get,
    audit_trail_entries,
    audit_trail_keys,
    audit_trail_page,
)
from audit.services import audit_log_used_record
from audit.views.trail import (
    CHANGES,
    CSV_COLUMNS,
    a5_message,
    csv_stream,
    json_stream,
    log_participant,
    midnight_utc,
    trail_fold,
    trail_row,
    xml_stream,
)
from portal.web.pages import TenantPageView

PAGE_SIZE = 50
# Filters that name a patient or a study: accepted only from a POSTed form or a saved filter, never from a URL.
IDENTIFYING_FILTERS = ("patient", "study")
SAVED_FILTERS_KEY = "audit_saved_filters"
SAVED_FILTERS_KEPT = 20
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


class AuditFilterForm(forms.Form):
    """The browser's filters. Times are UTC; a date alone counts whole (an end date until its midnight)."""

    patient = forms.CharField(required=False, max_length=64, label="Patient ID")
    study = forms.CharField(required=False, max_length=64, label="Study Instance UID")
    user = forms.CharField(required=False, max_length=150, label="User name")
    device = forms.CharField(required=False, max_length=64, label="Device (AE title or id)")
    event = forms.ChoiceField(required=False, label="Event")
    outcome = forms.ChoiceField(required=False, label="Outcome")
    address = forms.GenericIPAddressField(required=False, label="Source address")
    start = forms.DateTimeField(
        required=False, label="From (UTC)", input_formats=DATETIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )  # fmt: skip
    end = forms.DateTimeField(
        required=False, label="To (UTC)", input_formats=DATETIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        event = self.fields["event"]
        assert isinstance(event, forms.ChoiceField)
        event.choices = [
            ("", "All events and changes"),
            (CHANGES, "Field changes (every model)"),
            *[(str(e.value), f"{e.spec.description} ({e.spec.event_id.value})") for e in EventType],
        ]
        outcome = self.fields["outcome"]
        assert isinstance(outcome, forms.ChoiceField)
        outcome.choices = [("", "Any outcome"), *[(str(code), label) for code, label in Outcome.LABELS.items()]]

    def _date_only(self, name: str) -> bool:
        return len(str(self.data.get(name, "")).strip()) == len("2026-01-01")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if any(data.get(name) is not None and data[name].year not in AUDIT_FILTER_YEARS for name in ("start", "end")):
            raise forms.ValidationError(AUDIT_FILTER_YEARS_REASON)
        for name in ("start", "end"):
            if data.get(name) is not None:
                data[name] = data[name].replace(tzinfo=UTC) if timezone.is_naive(data[name]) else data[name]
        if data.get("end") is not None and self._date_only("end"):
            data["end"] = midnight_utc(data["end"].date() + timedelta(days=1))
        start, end = data.get("start"), data.get("end")
        if start and end and start >= end:
            raise forms.ValidationError("The start date is after the end date.")
        return data

    def trail_filters(self, *, asof: datetime | None = None) -> TrailFilters:
        data = self.cleaned_data
        event = data.get("event") or ""
        until = data.get("end")
        if asof is not None:
            until = min(until, asof) if until is not None else asof
        return TrailFilters(
            username=data.get("user", "").strip(),
            event_type=int(event) if event and event != CHANGES else None,
            changes_only=event == CHANGES,
            since=data.get("start"),
            until=until,
            patient_id=data.get("patient", "").strip(),
            study_uid=data.get("study", "").strip(),
            device=data.get("device", "").strip(),
            outcome=int(data["outcome"]) if data.get("outcome") else None,
            source_address=data.get("address") or "",
        )

    def recorded_filters(self) -> dict[str, str]:
        """The filters as written into the AUDIT_LOG_USED event (only those given). The trail may keep the patient
        id searched for: that search is itself an access to the patient's record."""
        return {name: str(self.data.get(name, "")).strip() for name in self.fields if self.data.get(name)}

    def saved_data(self) -> dict[str, str]:
        return {name: str(self.data.get(name, "")) for name in self.fields if self.data.get(name)}


class FilterError(Exception):
    """The request's filters cannot be used; the message says why (a 400)."""


def filters_from_request(request: HttpRequest, tenant_pk: int) -> tuple[AuditFilterForm, str]:
    """The filter form of a GET: from the saved filter `?q=<id>` of this person and tenant, else from the query
    string, which may not carry identifying filters. Returns the form (bound) and the saved filter id."""
    token = request.GET.get("q", "")
    if token:
        saved = request.session.get(SAVED_FILTERS_KEY, {}).get(token)
        if not saved or saved.get("tenant") != tenant_pk:
            raise FilterError("This saved filter has expired: filter again.")
        return AuditFilterForm(saved["data"]), token
    named = [name for name in IDENTIFYING_FILTERS if request.GET.get(name)]
    if named:
        raise FilterError(f"Send {', '.join(named)} with the filter form (POST), never in the address.")
    return AuditFilterForm(request.GET), ""


def filters_save(request: HttpRequest, tenant_pk: int, form: AuditFilterForm) -> str:
    """Keep a valid filter in the session under a new opaque id (the last few are kept)."""
    saved = dict(request.session.get(SAVED_FILTERS_KEY, {}))
    token = secrets.token_urlsafe(12)
    saved[token] = {"tenant": tenant_pk, "data": form.saved_data()}
    request.session[SAVED_FILTERS_KEY] = dict(list(saved.items())[-SAVED_FILTERS_KEPT:])
    return token


def cursor_encode(cursor: TrailCursor) -> str:
    text = f"{cursor.kind}|{cursor.at.astimezone(UTC).isoformat(timespec='microseconds')}|{cursor.row_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cursor_decode(value: str) -> TrailCursor | None:
    if not value:
        return None
    try:
        kind, at, row_id = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode().split("|")
        cursor = TrailCursor(at=datetime.fromisoformat(at), kind=kind, row_id=int(row_id))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise FilterError("This page link is damaged: start from the newest page.") from exc
    if cursor.kind not in ("event", "change") or cursor.at.tzinfo is None:
        raise FilterError("This page link is damaged: start from the newest page.")
    return cursor


def _bad_request(view: TenantPageView, request: HttpRequest, form: AuditFilterForm, message: str) -> HttpResponse:
    context = {"form": form, "rows": [], "shown": False, "message": message}
    return view.render(request, "audit/audit.html", context, status=400)


class AuditView(TenantPageView):
    """/t/<tenant>/audit/ : the tenant's audit events and field changes in one list, newest first, filtered by
    patient, study, user, device, event, outcome, source address and time; keyset pages. Compliance officers,
    auditors and tenant admins (`tenants.view_audit`). POST the form to filter: the answer redirects to the
    saved filter's id."""

    required_permission = "tenants.view_audit"

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = AuditFilterForm(request.POST)
        if not form.is_valid():
            return _bad_request(self, request, form, "")
        token = filters_save(request, self.tenant.pk, form)
        return HttpResponseRedirect(f"{reverse('portal:audit', kwargs={'tenant': self.tenant.slug})}?q={token}")

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        try:
            form, token = filters_from_request(request, self.tenant.pk)
            after = cursor_decode(request.GET.get("after", ""))
        except FilterError as exc:
            return _bad_request(self, request, AuditFilterForm(), str(exc))
        if not form.is_valid():
            return _bad_request(self, request, form, "")
        filters = form.trail_filters()
        keys, next_cursor = audit_trail_page(actor=request.user, filters=filters, after=after, size=PAGE_SIZE)
        rows = trail_fold([trail_row(entry) for entry in audit_trail_entries(keys)])
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            participants=_filter_participants(filters),
            extra={"filters": form.recorded_filters(), "results": len(keys), "older_page": after is not None},
        )
        base_query = {"q": token} if token else dict(form.saved_data().items())
        context = {
            "form": form,
            "rows": rows,
            "shown": True,
            "count": len(keys),
            "is_first_page": after is None,
            "base_query": urlencode(base_query),
            "next_query": urlencode({**base_query, "after": cursor_encode(next_cursor)}) if next_cursor else "",
        }
        return self.render(request, "audit/audit.html", context)


def _filter_participants(filters: TrailFilters) -> list[dict[str, Any]]:
    """A search of the trail for a patient or a study is an access to them: they are participants of the event."""
    entries: list[dict[str, Any]] = []
    if filters.patient_id:
        entries.append({"type": "patient", "id": filters.patient_id, "role": "searched for"})
    if filters.study_uid:
        entries.append({"type": "study", "id": filters.study_uid, "role": "searched for"})
    return entries


class AuditExportView(TenantPageView):
    """/t/<tenant>/audit/export.csv : the same list with the same filters (`?q=` or the plain ones), as CSV."""

    required_permission = "tenants.view_audit"
    export_format = "csv"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponseBase:
        try:
            form, _ = filters_from_request(request, self.tenant.pk)
        except FilterError as exc:
            return HttpResponse(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")
        if not form.is_valid():
            errors = "; ".join(str(error) for errors in form.errors.values() for error in errors)
            return HttpResponse(f"Invalid filters: {errors}\n", status=400, content_type="text/plain; charset=utf-8")
        filters = form.trail_filters(asof=timezone.now())
        keys = audit_trail_keys(actor=request.user, filters=filters)
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            participants=_filter_participants(filters),
            extra={"export": self.export_format, "filters": form.recorded_filters(), "results": keys.count()},
        )
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response = self.stream(keys)
        response["Content-Disposition"] = (
            f'attachment; filename="audit-{self.tenant.slug}-{stamp}.{self.export_format}"'
        )
        return response

    def stream(self, keys: Any) -> StreamingHttpResponse:
        return StreamingHttpResponse(csv_stream(self.tenant, keys), content_type="text/csv; charset=utf-8")


class AuditJsonExportView(AuditExportView):
    """/t/<tenant>/audit/export.json : the same list as the CSV, as a JSON array."""

    export_format = "json"

    def stream(self, keys: Any) -> StreamingHttpResponse:
        return StreamingHttpResponse(json_stream(self.tenant, keys), content_type="application/json")


class AuditXmlExportView(AuditExportView):
    """/t/<tenant>/audit/export.xml : the events of the same filtered list as DICOM audit messages (PS3.15 A.5),
    one AuditMessage each in an AuditMessages document. Field changes have no A.5 form and are left out."""

    export_format = "xml"

    def stream(self, keys: Any) -> StreamingHttpResponse:
        source = getattr(settings, "AUDIT_SOURCE_ID", "enclave")
        return StreamingHttpResponse(
            xml_stream(self.tenant, keys, audit_source=source), content_type="application/xml; charset=utf-8"
        )


class AuditEventDetailView(TenantPageView):
    """/t/<tenant>/audit/events/<public_id>/ : one audit event with every element of its DICOM audit message,
    and the field changes its request made."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        event = audit_event_get(actor=request.user, public_id=public_id)  # NotVisible -> 404
        row = trail_row(TrailEntry("event", event.occurred_at, event=event))
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            extra={"entry": "event", "event": str(event.public_id), "sequence": event.sequence},
        )
        audit_source = getattr(settings, "AUDIT_SOURCE_ID", "enclave")
        context = {"row": row, "event": event, "sections": a5_message(event, audit_source=audit_source)}
        return self.render(request, "audit/audit_event.html", context)


class AuditChangeDetailView(TenantPageView):
    """/t/<tenant>/audit/changes/<id>/ : one django-auditlog field change, its diff with patient identifiers
    masked."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str, change_id: int) -> HttpResponse:
        change = audit_change_get(actor=request.user, change_id=change_id)  # NotVisible -> 404
        row = trail_row(TrailEntry("change", change.timestamp, change=change))
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            extra={"entry": "change", "change": change.pk},
        )
        return self.render(request, "audit/audit_change.html", {"row": row, "change": change})


__all__ = ["CSV_COLUMNS", "PAGE_SIZE", "AuditChangeDetailView", "AuditEventDetailView", "AuditExportView",
           "AuditView"]  # fmt: skip
