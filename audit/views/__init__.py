"""The audit app's pages: the trail browser (pages) and how its rows read (trail)."""

from audit.views.alerts import AlertDetailView, AlertListView
from audit.views.dashboard import AuditDashboardView, ComplianceReportPdfView, ComplianceReportView
from audit.views.incidents import IncidentDetailView, IncidentListView, IncidentOpenView
from audit.views.pages import (
    PAGE_SIZE,
    AuditChangeDetailView,
    AuditEventDetailView,
    AuditExportView,
    AuditJsonExportView,
    AuditView,
    AuditXmlExportView,
)
from audit.views.reports import BreachScopeView, DisclosureSuspendView, DisclosuresView

__all__ = [
    "PAGE_SIZE",
    "AlertDetailView",
    "AlertListView",
    "AuditChangeDetailView",
    "AuditDashboardView",
    "AuditEventDetailView",
    "AuditExportView",
    "AuditJsonExportView",
    "AuditView",
    "AuditXmlExportView",
    "BreachScopeView",
    "ComplianceReportPdfView",
    "ComplianceReportView",
    "DisclosureSuspendView",
    "DisclosuresView",
    "IncidentDetailView",
    "IncidentListView",
    "IncidentOpenView",
]
