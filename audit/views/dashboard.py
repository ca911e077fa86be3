"""/t/<tenant>/audit/dashboard/ : the tenant's trail at a glance for its compliance officers, with charts drawn as
SVG on the server (no script, no inline style: the Content-Security-Policy stays strict)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Exists, OuterRef
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit import signing
from audit.events import EventType
from audit.models import SecurityAlert
from audit.selectors import audit_dashboard, audit_event_list, security_alert_list
from audit.services import audit_log_used_record
from audit.views.trail import log_participant
from portal.web.pages import TenantPageView
from tenants.selectors import membership_list

CHART_HEIGHT = 120
BAR_WIDTH = 14


def bars(days: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One SVG bar per day, scaled to the largest value of the series."""
    peak = max((day[key] for day in days), default=0) or 1
    out = []
    for index, day in enumerate(days):
        height = round(CHART_HEIGHT * day[key] / peak)
        out.append({"x": index * (BAR_WIDTH + 2), "y": CHART_HEIGHT - height, "height": height, "day": day["day"],
                    "value": day[key]})  # fmt: skip
    return out


class AuditDashboardView(TenantPageView):
    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        dashboard = audit_dashboard(actor=request.user)
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            extra={"report": "dashboard"},
        )
        width = len(dashboard.days) * (BAR_WIDTH + 2)
        charts = [
            ("Events per day", bars(dashboard.days, "events")),
            ("Refusals and failures per day", bars(dashboard.days, "refusals")),
            ("Instances stored per day", bars(dashboard.days, "stored")),
            ("Objects rejected at ingest per day", bars(dashboard.days, "rejected")),
        ]
        context = {"dashboard": dashboard, "charts": charts, "chart_width": width, "chart_height": CHART_HEIGHT,
                   "bar_width": BAR_WIDTH}  # fmt: skip
        return self.render(request, "audit/dashboard.html", context)


class ComplianceReportView(TenantPageView):
    """/t/<tenant>/audit/compliance/ : the printable compliance report: MFA coverage of the current members,
    open alerts by severity, the last audit verification (successful and failed) and the last signed digest."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        members = membership_list(actor=request.user, include_ended=False).annotate(
            has_mfa=Exists(TOTPDevice.objects.filter(user=OuterRef("user"), confirmed=True))
        )
        without_mfa = sorted(m.user.username for m in members if not m.has_mfa)
        total = len(members)
        verified = audit_event_list(actor=request.user, event_type=EventType.AUDIT_VERIFIED)
        alerts = security_alert_list(actor=request.user)
        open_states = [SecurityAlert.Status.OPEN, SecurityAlert.Status.ESCALATED]
        open_by_severity = dict(
            alerts.filter(status__in=open_states).values_list("severity").annotate(n=Count("pk")).order_by()
        )
        dashboard = audit_dashboard(actor=request.user, days=1)
        audit_log_used_record(
            actor=request.user,
            tenant=self.tenant,
            target=log_participant(request, self.tenant),
            extra={"report": "compliance"},
        )
        context = {
            "members": total,
            "with_mfa": total - len(without_mfa),
            "without_mfa": without_mfa,
            "mfa_percent": round(100 * (total - len(without_mfa)) / total) if total else 100,
            "last_ok": verified.filter(outcome=0).first(),
            "last_failed": verified.exclude(outcome=0).first(),
            "open_alerts": [(label, open_by_severity.get(value, 0)) for value, label in SecurityAlert.Severity.choices],
            "last_digest": dashboard.last_digest,
            # The public half of the digests' signing key, published so that anyone can check the digest files.
            "signing_public_key": signing.public_key_text(),
            "printed": timezone.now(),
        }
        return self.render(request, "audit/compliance.html", context)
