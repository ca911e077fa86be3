"""Security alerts: the tenant's alert queue and one alert with its evidence, acknowledged, escalated or closed
with a note. Reading alerts is reading the trail (Audit Log Used); handling one is its own audit event."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from audit.models import SecurityAlert
from audit.selectors import security_alert_evidence, security_alert_get, security_alert_list
from audit.services import ALERT_HANDLE_PERM, ALERT_HANDLE_STATES, audit_log_used_record, security_alert_handle
from audit.views.trail import log_participant
from portal.web.pages import TenantPageView

ALERTS_SHOWN = 200


class AlertHandleForm(forms.Form):
    state = forms.ChoiceField(choices=[(state.value, state.label) for state in ALERT_HANDLE_STATES])
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))


class AlertListView(TenantPageView):
    """/t/<tenant>/audit/alerts/ : the alert queue, open first by default (`?state=` any state, `all`)."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        state = request.GET.get("state", SecurityAlert.Status.OPEN)
        if state not in {*SecurityAlert.Status.values, "all"}:
            return self.render(request, "audit/alerts.html", {"alerts": [], "error": "Unknown state."}, status=400)
        alerts = list(security_alert_list(actor=request.user, status="" if state == "all" else state)[:ALERTS_SHOWN])
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            extra={"alerts": state, "results": len(alerts)},
        )
        context = {"alerts": alerts, "state": state, "states": [("all", "All"), *SecurityAlert.Status.choices]}
        return self.render(request, "audit/alerts.html", context)


class AlertDetailView(TenantPageView):
    """/t/<tenant>/audit/alerts/<public_id>/ : one alert, its evidence events, and (for those who may handle
    alerts) the form to acknowledge, escalate or close it."""

    required_permission = "tenants.view_audit"

    def _render(
        self, request: HttpRequest, alert: SecurityAlert, form: AlertHandleForm, status: int = 200
    ) -> HttpResponse:
        context = {
            "alert": alert,
            "evidence": security_alert_evidence(actor=request.user, alert=alert),
            "form": form,
            "may_handle": ALERT_HANDLE_PERM in self.perms and alert.status != SecurityAlert.Status.CLOSED,
            "may_open_incident": ALERT_HANDLE_PERM in self.perms,
            "incidents": list(alert.incidents.all()),
        }
        return self.render(request, "audit/alert.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        alert = security_alert_get(actor=request.user, public_id=public_id)  # NotVisible -> 404
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            extra={"alert": str(alert.public_id)},
        )
        return self._render(request, alert, AlertHandleForm())

    def post(self, request: HttpRequest, tenant: str, public_id: str) -> HttpResponse:
        alert = security_alert_get(actor=request.user, public_id=public_id)
        form = AlertHandleForm(request.POST)
        if form.is_valid():
            try:
                security_alert_handle(
                    actor=request.user, alert=alert, state=form.cleaned_data["state"], note=form.cleaned_data["note"]
                )  # access.Forbidden -> 403 and ACCESS_DENIED (TenantPageView)
            except ValidationError as exc:
                for name, messages in exc.message_dict.items():
                    for message in messages:
                        form.add_error(name if name in form.fields else None, message)
            else:
                url = reverse("portal:audit_alert", kwargs={"tenant": self.tenant.slug, "public_id": alert.public_id})
                return HttpResponseRedirect(url)
        return self._render(request, alert, form, status=400)
