"""Routes of the studies app: pages under /t/<tenant>/ (the REST API of the archive comes later)."""

from django.urls import path

from studies import views

page_patterns = [
    path("upload/", views.UploadView.as_view(), name="upload"),
    path("upload/files/", views.UploadFilesView.as_view(), name="upload_files"),
    path("ingest/", views.IngestActivityView.as_view(), name="ingest"),
    path("ingest/batch/<uuid:batch>/", views.IngestBatchView.as_view(), name="ingest_batch"),
    path("studies/", views.StudiesView.as_view(), name="studies"),
    path("series/<uuid:public_id>/thumbnail.png", views.SeriesThumbnailView.as_view(), name="series_thumbnail"),
]
api_patterns: list = []
