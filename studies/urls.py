"""Routes of the studies app: pages under /t/<tenant>/ (the REST API of the archive comes later)."""

from django.urls import path

from studies import apis_access, views, views_access, views_export, views_study

page_patterns = [
    path("upload/", views.UploadView.as_view(), name="upload"),
    path("upload/files/", views.UploadFilesView.as_view(), name="upload_files"),
    path("ingest/", views.IngestActivityView.as_view(), name="ingest"),
    path("ingest/batch/<uuid:batch>/", views.IngestBatchView.as_view(), name="ingest_batch"),
    path("studies/", views.StudiesView.as_view(), name="studies"),
    path("studies/<uuid:public_id>/", views_study.StudyView.as_view(), name="study"),
    path("studies/<uuid:public_id>/history/", views_study.StudyHistoryView.as_view(), name="study_history"),
    path("series/<uuid:public_id>/thumbnail.png", views.SeriesThumbnailView.as_view(), name="series_thumbnail"),
    path("studies/<uuid:public_id>/access/", views_access.StudyAccessView.as_view(), name="study_access"),
    path(
        "studies/<uuid:public_id>/access/shares/<uuid:share_id>/revoke/",
        views_access.ShareRevokeView.as_view(),
        name="share_revoke",
    ),
    path("break-glass/", views_access.BreakGlassView.as_view(), name="break_glass"),
    path("break-glass/review/", views_access.BreakGlassReviewView.as_view(), name="break_glass_review"),
    path(
        "break-glass/review/<uuid:public_id>/",
        views_access.BreakGlassSignOffView.as_view(),
        name="break_glass_sign_off",
    ),
    path("break-glass/<uuid:public_id>/end/", views_access.BreakGlassEndView.as_view(), name="break_glass_end"),
    path("studies/<uuid:public_id>/export/", views_export.StudyExportView.as_view(), name="study_export"),
    path("exports/search/", views_export.SearchExportView.as_view(), name="export_search"),
    path("exports/<uuid:public_id>/", views_export.ExportProgressView.as_view(), name="export_progress"),
    path("exports/<uuid:public_id>/status.json", views_export.ExportStatusView.as_view(), name="export_status"),
    path("exports/<uuid:public_id>/download/", views_export.ExportDownloadView.as_view(), name="export_download"),
]
api_patterns: list = [
    path("studies/<str:public_id>/shares/", apis_access.ShareCreateApi.as_view(), name="study_shares"),
    path("studies/<str:public_id>/shares/<str:share_id>/", apis_access.ShareRevokeApi.as_view(), name="study_share"),
    path("break-glass/", apis_access.BreakGlassStartApi.as_view(), name="break_glass"),
]
