"""Two reports over the trail for compliance officers (`tenants.view_audit`), as a page and as CSV:

- the accounting of disclosures of one patient (HIPAA 164.528): when, what, who, to whom and why;
- breach scoping: the patients (and their studies) a person, a device or an address touched in a time window.

Both take patient-revealing input or output, so both are POSTed (nothing in our URLs) and both are recorded as
Audit Log Used naming the patients concerned.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from audit.models import AuditEvent
from audit.selectors import audit_breach_scope, audit_disclosure_get, audit_disclosures_for_patient
from audit.services import audit_log_used_record, disclosure_accounting_suspend
from audit.views.pages import DATETIME_FORMATS
from audit.views.trail import csv_cell, log_participant, midnight_utc
from portal.web.pages import TenantPageView


def _window_clean(form: forms.Form) -> None:
    data = form.cleaned_data
    for name in ("start", "end"):
        if data.get(name) is not None and timezone.is_naive(data[name]):
            data[name] = data[name].replace(tzinfo=UTC)
    if data.get("end") is not None and len(str(form.data.get("end", "")).strip()) == len("2026-01-01"):
        data["end"] = midnight_utc(data["end"].date() + timedelta(days=1))
    if data.get("start") and data.get("end") and data["start"] >= data["end"]:
        raise forms.ValidationError("The start date is after the end date.")


def _datetime_field(label: str, *, required: bool = False) -> forms.DateTimeField:
    return forms.DateTimeField(
        required=required, label=label, input_formats=DATETIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )  # fmt: skip


def _csv_response(name: str, header: list[str], lines: list[list[Any]]) -> HttpResponse:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for line in lines:
        writer.writerow([csv_cell(value) for value in line])
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    return response


# Accounting of disclosures
# ------------------------------------------------------------------------------


class DisclosuresForm(forms.Form):
    patient = forms.CharField(max_length=64, label="Patient ID")
    start = _datetime_field("From (UTC)")
    end = _datetime_field("To (UTC)")
    accesses = forms.BooleanField(required=False, label="Include every access (reads and searches)")

    def clean(self) -> dict[str, Any]:
        super().clean()
        _window_clean(self)
        return self.cleaned_data


def disclosure_row(event: AuditEvent) -> dict[str, Any]:
    """One line of the accounting: when, what, who, to whom, why, which studies."""
    extra = event.extra or {}
    entries = event.participants or []
    grantee = next((p for p in entries if p.get("role") == "grantee"), None)
    recipient = (
        extra.get("recipient") or (grantee or {}).get("name") or extra.get("email") or extra.get("destination_ae") or ""
    )
    return {
        "event": event,
        "at": event.occurred_at,
        "what": event.verb,
        "phase": str(extra.get("phase", "")),
        "who": event.actor_username or event.system_principal,
        "recipient": str(recipient),
        "purpose": str(extra.get("purpose") or extra.get("note") or ""),
        "studies": [str(p.get("id")) for p in entries if p.get("type") == "study"],
        "outcome": event.outcome_label,
    }


DISCLOSURE_CSV = ["when_utc", "what", "phase", "by", "recipient", "purpose", "studies", "outcome", "event_id"]


class DisclosuresView(TenantPageView):
    """/t/<tenant>/audit/disclosures/ : the accounting of disclosures of one patient over a period."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        if request.GET.get("patient"):
            return self.render(
                request, "audit/disclosures.html",
                {"form": DisclosuresForm(), "error": "Send the patient ID with the form (POST), never in the address."},
                status=400,
            )  # fmt: skip
        context = {"form": DisclosuresForm(), "suspend_form": SuspensionForm()}
        return self.render(request, "audit/disclosures.html", context)

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = DisclosuresForm(request.POST)
        if not form.is_valid():
            return self.render(request, "audit/disclosures.html", {"form": form}, status=400)
        data = form.cleaned_data
        patient_id = data["patient"].strip()
        events = list(
            audit_disclosures_for_patient(
                actor=request.user, patient_id=patient_id, since=data.get("start"), until=data.get("end"),
                include_accesses=data.get("accesses", False),
            )
        )  # fmt: skip
        rows = [disclosure_row(event) for event in events]
        as_csv = request.POST.get("format") == "csv"
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            participants=[{"type": "patient", "id": patient_id, "role": "accounting of disclosures"}],
            extra={"report": "disclosures", "format": "csv" if as_csv else "page", "results": len(rows),
                   "accesses": bool(data.get("accesses"))},
        )  # fmt: skip
        if as_csv:
            lines = [
                [row["at"].astimezone(UTC).isoformat(timespec="seconds"), row["what"], row["phase"], row["who"],
                 row["recipient"], row["purpose"], " ".join(row["studies"]), row["outcome"], row["event"].public_id]
                for row in rows
            ]  # fmt: skip
            return _csv_response(f"disclosures-{self.tenant.slug}", DISCLOSURE_CSV, lines)
        context = {"form": form, "rows": rows, "shown": True, "patient_id": patient_id, "printed": timezone.now(),
                   "suspend_form": SuspensionForm()}  # fmt: skip
        return self.render(request, "audit/disclosures.html", context)


class SuspensionForm(forms.Form):
    disclosure = forms.UUIDField(label="Disclosure (event id)")
    until = _datetime_field("Withheld until (UTC)", required=True)
    agency = forms.CharField(max_length=200, label="Agency or official")
    statement = forms.CharField(required=False, max_length=500, label="Their statement",
                                widget=forms.Textarea(attrs={"rows": 2}))  # fmt: skip


class DisclosureSuspendView(TenantPageView):
    """/t/<tenant>/audit/disclosures/suspend/ : withhold one disclosure from the patient's accounting until a date,
    at the written or oral request of a health oversight agency or law enforcement (HIPAA 164.528(a)(2)).
    The disclosure is named by its event id; another tenant's or a missing one is a 404. Recorded."""

    required_permission = "tenants.view_audit"

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = SuspensionForm(request.POST)
        if not form.is_valid():
            return self.render(request, "audit/disclosures.html", {"form": DisclosuresForm(), "suspend_form": form},
                               status=400)  # fmt: skip
        data = form.cleaned_data
        disclosure = audit_disclosure_get(actor=request.user, public_id=data["disclosure"])  # NotVisible -> 404
        try:
            event = disclosure_accounting_suspend(
                actor=request.user, tenant=self.tenant, disclosure=disclosure, until=data["until"],
                agency=data["agency"], statement=data.get("statement", ""),
            )  # fmt: skip
        except ValidationError as exc:
            form.add_error(None, exc)
            return self.render(request, "audit/disclosures.html", {"form": DisclosuresForm(), "suspend_form": form},
                               status=400)  # fmt: skip
        context = {"form": DisclosuresForm(), "suspend_form": SuspensionForm(), "suspended": event}
        return self.render(request, "audit/disclosures.html", context)


# Breach scoping
# ------------------------------------------------------------------------------


class BreachScopeForm(forms.Form):
    user = forms.CharField(required=False, max_length=150, label="User name")
    device = forms.CharField(required=False, max_length=64, label="Device (AE title or id)")
    address = forms.GenericIPAddressField(required=False, label="Source address")
    start = _datetime_field("From (UTC)", required=True)
    end = _datetime_field("To (UTC)", required=True)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if not (data.get("user") or data.get("device") or data.get("address")):
            raise forms.ValidationError("Name a user, a device or an address.")
        _window_clean(self)
        return data


BREACH_CSV = ["patient_id", "patient_name", "studies", "events", "first_utc", "last_utc", "what"]


class BreachScopeView(TenantPageView):
    """/t/<tenant>/audit/breach-scope/ : the patients a person, device or address touched in a time window."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self.render(request, "audit/breach_scope.html", {"form": BreachScopeForm()})

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = BreachScopeForm(request.POST)
        if not form.is_valid():
            return self.render(request, "audit/breach_scope.html", {"form": form}, status=400)
        data = form.cleaned_data
        try:
            touched = audit_breach_scope(
                actor=request.user, since=data["start"], until=data["end"], username=data.get("user", "").strip(),
                device=data.get("device", "").strip(), source_address=data.get("address") or "",
            )  # fmt: skip
        except ValidationError as exc:
            form.add_error(None, exc)
            return self.render(request, "audit/breach_scope.html", {"form": form}, status=400)
        as_csv = request.POST.get("format") == "csv"
        recorded = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items() if v}
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            participants=[{"type": "patient", "id": row.patient_id, "role": "breach scope"} for row in touched],
            extra={"report": "breach scope", "format": "csv" if as_csv else "page", "filters": recorded,
                   "results": len(touched)},
        )  # fmt: skip
        if as_csv:
            lines = [
                [row.patient_id, row.name, " ".join(sorted(row.studies)), row.events,
                 row.first.astimezone(UTC).isoformat(timespec="seconds"),
                 row.last.astimezone(UTC).isoformat(timespec="seconds"), "; ".join(sorted(row.verbs))]
                for row in touched
            ]  # fmt: skip
            return _csv_response(f"breach-scope-{self.tenant.slug}", BREACH_CSV, lines)
        return self.render(request, "audit/breach_scope.html", {"form": form, "rows": touched, "shown": True})
