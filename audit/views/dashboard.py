"""/t/<tenant>/audit/dashboard/ : the tenant's trail at a glance for its compliance officers, with charts drawn as
SVG on the server (no script, no inline style: the Content-Security-Policy stays strict)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Exists, OuterRef
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from fpdf import FPDF

from audit import signing
from audit.events import EventType
from audit.incidents import incident_deadlines
from audit.models import Incident, SecurityAlert
from audit.selectors import (
    ReportSection,
    audit_dashboard,
    audit_event_list,
    compliance_sections,
    incident_list,
    security_alert_list,
)
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


def compliance_report(request: HttpRequest, tenant: Any) -> list[ReportSection]:
    """The report's sections for the current tenant: MFA coverage, open alerts and incidents, the trail's integrity
    (last verification and signed digest), then what the other apps register (training coverage, devices by state,
    encryption at rest, the last restore drill)."""
    members = membership_list(actor=request.user, include_ended=False).annotate(
        has_mfa=Exists(TOTPDevice.objects.filter(user=OuterRef("user"), confirmed=True))
    )
    without_mfa = sorted(m.user.username for m in members if not m.has_mfa)
    total = len(members)
    mfa_percent = round(100 * (total - len(without_mfa)) / total) if total else 100
    verified = audit_event_list(actor=request.user, event_type=EventType.AUDIT_VERIFIED)
    last_ok, last_failed = verified.filter(outcome=0).first(), verified.exclude(outcome=0).first()
    alerts = security_alert_list(actor=request.user)
    open_states = [SecurityAlert.Status.OPEN, SecurityAlert.Status.ESCALATED]
    open_by_severity = dict(
        alerts.filter(status__in=open_states).values_list("severity").annotate(n=Count("pk")).order_by()
    )
    incidents = [i for i in incident_list(actor=request.user) if i.status != Incident.Status.CLOSED]
    deadlines = sorted((d.due, d.label, i.title) for i in incidents for d in incident_deadlines(i))
    digest = audit_dashboard(actor=request.user, days=1).last_digest

    def when(value: Any) -> str:
        return f"{value:%Y-%m-%d %H:%M} UTC"

    sections = [
        ReportSection(
            "Multi-factor authentication",
            [("Current members", str(total)), ("With an authenticator", f"{total - len(without_mfa)} ({mfa_percent}%)"),
             ("Without", ", ".join(without_mfa) or "nobody")],
            ok=not without_mfa,
        ),
        ReportSection(
            "Open security alerts",
            [(label, str(open_by_severity.get(value, 0))) for value, label in SecurityAlert.Severity.choices],
            ok=not open_by_severity,
        ),
        ReportSection(
            "Open incidents",
            [("Open", str(len(incidents)))]
            + [(f"{label} ({title})", f"due {due:%Y-%m-%d}") for due, label, title in deadlines[:10]],
            ok=not incidents,
        ),
        ReportSection(
            "Audit trail integrity",
            [
                ("Last successful verification",
                 f"{when(last_ok.occurred_at)} ({last_ok.extra.get('events')} events)" if last_ok else "None yet"),
                ("Last failed verification",
                 f"{when(last_failed.occurred_at)}: {last_failed.outcome_description}" if last_failed else "None"),
                ("Last signed digest",
                 f"{digest.day:%Y-%m-%d}, sequence {digest.last_sequence}" if digest else "None yet"),
                ("Digest signing key (Ed25519, public)",
                 signing.public_key_text() or "Not configured: digests are not signed"),
            ],
            ok=last_ok is not None and (last_failed is None or last_failed.occurred_at < last_ok.occurred_at),
        ),
    ]  # fmt: skip
    sections.append(_drill_section(request))
    return sections + compliance_sections(actor=request.user)


def _drill_section(request: HttpRequest) -> ReportSection:
    """The last restore drill. The drill is platform work; it records its result, and what it checked of this
    tenant, on each tenant's own trail (studies.services.backups), so the report reads it there."""
    drill = audit_event_list(actor=request.user, event_type=EventType.RESTORE_DRILL_RUN).first()
    if drill is None:
        none_yet = "none yet (manage.py restore_drill, or weekly by the beat)"
        return ReportSection("Backups: last restore drill", [("Drill", none_yet)], ok=False)
    extra = drill.extra or {}
    seconds = extra.get("recovery_seconds")
    rows = [
        ("Drill", f"{drill.occurred_at:%Y-%m-%d %H:%M} UTC: {'passed' if drill.outcome == 0 else 'FAILED'}"),
        ("Backup restored", f"{extra.get('backup') or 'none'}"
                            + (f" (taken {extra['backup_created_at']})" if extra.get("backup_created_at") else "")),
        ("Measured recovery time", f"{seconds:.1f} s" if seconds is not None else "not measured"),
        ("This tenant's checks",
         f"{extra.get('blobs_sampled', 0)} of {extra.get('instances', 0)} images decrypted and hash-checked "
         f"({extra.get('blobs_failed', 0)} failed); audit chain of {extra.get('chain_events', 0)} events verified"),
    ]  # fmt: skip
    if extra.get("problems"):
        rows.append(("Problems", "; ".join(str(p) for p in extra["problems"])))
    return ReportSection("Backups: last restore drill", rows, ok=drill.outcome == 0)


class ComplianceReportView(TenantPageView):
    """/t/<tenant>/audit/compliance/ : the printable compliance report (`compliance_report`)."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        sections = compliance_report(request, self.tenant)
        audit_log_used_record(actor=request.user, tenant=self.tenant, target=log_participant(request, self.tenant),
                              extra={"report": "compliance"})  # fmt: skip
        return self.render(request, "audit/compliance.html", {"sections": sections, "printed": timezone.now()})


class ComplianceReportPdfView(TenantPageView):
    """/t/<tenant>/audit/compliance.pdf : the same report as a PDF document (fpdf2), for the file."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        sections = compliance_report(request, self.tenant)
        audit_log_used_record(actor=request.user, tenant=self.tenant, target=log_participant(request, self.tenant),
                              extra={"report": "compliance", "format": "pdf"})  # fmt: skip
        pdf = compliance_pdf(tenant_name=self.tenant.name, sections=sections, printed=timezone.now())
        response = HttpResponse(pdf, content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="compliance-{self.tenant.slug}.pdf"'
        response["Cache-Control"] = "no-store"
        return response


def _latin1(text: str) -> str:
    """The PDF's core font speaks Latin-1: anything else becomes '?', never an error."""
    return text.encode("latin-1", "replace").decode("latin-1")


def compliance_pdf(*, tenant_name: str, sections: list[ReportSection], printed: Any) -> bytes:
    document = FPDF(format="A4")
    document.set_compression(False)  # a few kilobytes of text: readable as is, and searchable by tests
    document.set_title(_latin1(f"Compliance report: {tenant_name}"))
    document.set_creator("Enclave")
    document.add_page()
    document.set_font("Helvetica", "B", 16)
    document.multi_cell(0, 9, _latin1(f"Compliance report: {tenant_name}"), new_x="LMARGIN", new_y="NEXT")
    document.set_font("Helvetica", "", 9)
    document.cell(0, 6, f"Printed {printed:%Y-%m-%d %H:%M} UTC", new_x="LMARGIN", new_y="NEXT")
    for section in sections:
        document.ln(3)
        document.set_font("Helvetica", "B", 12)
        verdict = "" if section.ok is None else ("  [in order]" if section.ok else "  [needs attention]")
        document.multi_cell(0, 7, _latin1(section.title + verdict), new_x="LMARGIN", new_y="NEXT")
        document.set_font("Helvetica", "", 10)
        for label, value in section.rows:
            document.multi_cell(0, 5.5, _latin1(f"{label}: {value}"), new_x="LMARGIN", new_y="NEXT")
        if section.note:
            document.set_font("Helvetica", "I", 9)
            document.multi_cell(0, 5, _latin1(section.note), new_x="LMARGIN", new_y="NEXT")
    return bytes(document.output())
