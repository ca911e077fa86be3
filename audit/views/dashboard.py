"""/t/<tenant>/audit/dashboard/ : the tenant's trail at a glance for its compliance officers, with charts drawn as
SVG on the server (no script, no inline style: the Content-Security-Policy stays strict)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse

from audit.events import EventType
from audit.selectors import audit_dashboard
from audit.services import audit_event_record
from audit.views.trail import log_participant
from portal.web.pages import TenantPageView

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
        audit_event_record(
            event=EventType.AUDIT_LOG_USED,
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
