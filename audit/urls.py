"""Routes of the audit app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

from django.urls import path

from audit import apis, views

page_patterns = [
    path("audit/", views.AuditView.as_view(), name="audit"),
    path("audit/export.csv", views.AuditExportView.as_view(), name="audit_export"),
    path("audit/export.json", views.AuditJsonExportView.as_view(), name="audit_export_json"),
    path("audit/export.xml", views.AuditXmlExportView.as_view(), name="audit_export_xml"),
    path("audit/events/<str:public_id>/", views.AuditEventDetailView.as_view(), name="audit_event"),
    path("audit/changes/<int:change_id>/", views.AuditChangeDetailView.as_view(), name="audit_change"),
    path("audit/disclosures/", views.DisclosuresView.as_view(), name="audit_disclosures"),
    path("audit/disclosures/suspend/", views.DisclosureSuspendView.as_view(), name="audit_disclosure_suspend"),
    path("audit/breach-scope/", views.BreachScopeView.as_view(), name="audit_breach_scope"),
    path("audit/dashboard/", views.AuditDashboardView.as_view(), name="audit_dashboard"),
    path("audit/compliance/", views.ComplianceReportView.as_view(), name="audit_compliance"),
    path("audit/compliance.pdf", views.ComplianceReportPdfView.as_view(), name="audit_compliance_pdf"),
    path("audit/alerts/", views.AlertListView.as_view(), name="audit_alerts"),
    path("audit/alerts/<str:public_id>/", views.AlertDetailView.as_view(), name="audit_alert"),
    path("audit/alerts/<str:public_id>/incident/", views.IncidentOpenView.as_view(), name="audit_alert_incident"),
    path("audit/incidents/", views.IncidentListView.as_view(), name="audit_incidents"),
    path("audit/incidents/<str:public_id>/", views.IncidentDetailView.as_view(), name="audit_incident"),
]
api_patterns = [
    path("audit-events/", apis.AuditEventListApi.as_view(), name="audit_event_list"),
    path("audit-events/<str:public_id>/", apis.AuditEventDetailApi.as_view(), name="audit_event_detail"),
    path("audit-changes/", apis.AuditChangeListApi.as_view(), name="audit_change_list"),
]
