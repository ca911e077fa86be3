"""Security incidents: the list, opening one from an alert, and one incident with its scope (frozen breach-scope
result), decisions, determination, affected counts and HITECH deadlines. Reading them is reading the trail (Audit
Log Used); every change is an audit event of its own and in django-auditlog."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from audit.incidents import (
    incident_deadlines,
    incident_decision_record,
    incident_open,
    incident_scope_intact,
    incident_scope_take,
    incident_update,
)
from audit.models import Incident
from audit.selectors import incident_get, incident_list, security_alert_get
from audit.services import ALERT_HANDLE_PERM, audit_log_used_record
from audit.views.pages import DATETIME_FORMATS
from audit.views.trail import log_participant
from portal.web.pages import TenantPageView

INCIDENTS_SHOWN = 200


class IncidentOpenForm(forms.Form):
    title = forms.CharField(max_length=200)


class ScopeForm(forms.Form):
    username = forms.CharField(required=False, max_length=150)
    device = forms.CharField(required=False, max_length=150)
    address = forms.GenericIPAddressField(required=False)
    start = forms.DateTimeField(input_formats=DATETIME_FORMATS)
    end = forms.DateTimeField(input_formats=DATETIME_FORMATS)


class DecisionForm(forms.Form):
    text = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))


class UpdateForm(forms.Form):
    status = forms.ChoiceField(choices=Incident.Status.choices)
    determination = forms.ChoiceField(choices=Incident.Determination.choices)
    role = forms.ChoiceField(choices=Incident.Role.choices)
    affected_count = forms.IntegerField(min_value=0, max_value=10**9)
    affected_by_state = forms.CharField(
        required=False, max_length=4000, help_text='Residents affected per state, as JSON: {"NY": 120, "NJ": 3}'
    )

    def clean_affected_by_state(self) -> dict[str, Any]:
        raw = (self.cleaned_data.get("affected_by_state") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError('Write it as JSON, e.g. {"NY": 120}.') from exc
        if not isinstance(value, dict):
            raise forms.ValidationError('Write it as JSON, e.g. {"NY": 120}.')
        return value


def _errors_to_form(form: forms.Form, exc: ValidationError) -> None:
    for name, messages in exc.message_dict.items():
        for message in messages:
            form.add_error(name if name in form.fields else None, message)


class IncidentListView(TenantPageView):
    """/t/<tenant>/audit/incidents/ : the tenant's incidents with their next deadline."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        incidents = list(incident_list(actor=request.user)[:INCIDENTS_SHOWN])
        audit_log_used_record(actor=request.user, tenant=self.tenant, target=log_participant(request, self.tenant),
                              extra={"incidents": len(incidents)})  # fmt: skip
        rows = [(incident, next(iter(incident_deadlines(incident)), None)) for incident in incidents]
        return self.render(request, "audit/incidents.html", {"rows": rows})


class IncidentOpenView(TenantPageView):
    """POST /t/<tenant>/audit/alerts/<public_id>/incident/ : open an incident from an alert."""

    required_permission = "tenants.view_audit"

    def post(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        alert = security_alert_get(actor=request.user, public_id=public_id)  # NotVisible -> 404
        form = IncidentOpenForm(request.POST)
        if not form.is_valid():
            return self.render(request, "audit/incident_open_error.html", {"form": form, "alert": alert}, status=400)
        try:
            incident = incident_open(actor=request.user, tenant=self.tenant, alerts=[alert],
                                     title=form.cleaned_data["title"])  # fmt: skip
        except ValidationError as exc:
            _errors_to_form(form, exc)
            return self.render(request, "audit/incident_open_error.html", {"form": form, "alert": alert}, status=400)
        url = reverse("portal:audit_incident", kwargs={"tenant": self.tenant.slug, "public_id": incident.public_id})
        return HttpResponseRedirect(url)


class IncidentDetailView(TenantPageView):
    """/t/<tenant>/audit/incidents/<public_id>/ : one incident. POST `action` = scope, decision or update (for
    those who may handle alerts)."""

    required_permission = "tenants.view_audit"

    def _render(
        self, request: HttpRequest, incident: Incident, status: int = 200, **forms_: forms.Form
    ) -> HttpResponse:
        context = {
            "incident": incident,
            "deadlines": incident_deadlines(incident),
            "decisions": list(incident.decisions.select_related("decided_by")),
            "alerts": list(incident.alerts.all()),
            "scope_intact": incident_scope_intact(incident),
            "may_handle": ALERT_HANDLE_PERM in self.perms and incident.status != Incident.Status.CLOSED,
            "scope_form": forms_.get("scope_form") or ScopeForm(),
            "decision_form": forms_.get("decision_form") or DecisionForm(),
            "update_form": forms_.get("update_form") or UpdateForm(initial={
                "status": incident.status, "determination": incident.determination, "role": incident.role,
                "affected_count": incident.affected_count,
                "affected_by_state": json.dumps(incident.affected_by_state) if incident.affected_by_state else "",
            }),
        }  # fmt: skip
        return self.render(request, "audit/incident.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        incident = incident_get(actor=request.user, public_id=public_id)
        patients = [{"type": "patient", "id": p.get("patient_id", ""), "name": p.get("name", "")}
                    for p in incident.scope_snapshot or []]  # fmt: skip
        audit_log_used_record(actor=request.user, tenant=self.tenant, target=log_participant(request, self.tenant),
                              participants=patients, extra={"incident": str(incident.public_id)})  # fmt: skip
        return self._render(request, incident)

    def post(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        incident = incident_get(actor=request.user, public_id=public_id)
        action = request.POST.get("action", "")
        form: forms.Form
        try:
            if action == "scope":
                form = ScopeForm(request.POST)
                if not form.is_valid():
                    return self._render(request, incident, 400, scope_form=form)
                data = form.cleaned_data
                start, end = (
                    value if value.tzinfo else value.replace(tzinfo=UTC) for value in (data["start"], data["end"])
                )
                incident_scope_take(actor=request.user, incident=incident, since=start, until=end,
                                    username=data["username"], device=data["device"],
                                    source_address=data["address"] or "")  # fmt: skip
            elif action == "decision":
                form = DecisionForm(request.POST)
                if not form.is_valid():
                    return self._render(request, incident, 400, decision_form=form)
                incident_decision_record(actor=request.user, incident=incident, text=form.cleaned_data["text"])
            elif action == "update":
                form = UpdateForm(request.POST)
                if not form.is_valid():
                    return self._render(request, incident, 400, update_form=form)
                incident_update(actor=request.user, incident=incident, **form.cleaned_data)
            else:
                return self._render(request, incident, 400)
        except ValidationError as exc:  # access.Forbidden -> 403 and ACCESS_DENIED (TenantPageView)
            _errors_to_form(form, exc)
            return self._render(request, incident, 400, **{f"{action}_form": form})
        url = reverse("portal:audit_incident", kwargs={"tenant": self.tenant.slug, "public_id": incident.public_id})
        return HttpResponseRedirect(url)
