"""Routes of the training app: pages under /t/<tenant>/training/ and API under /api/v1/t/<tenant>/training/."""

from __future__ import annotations

from django.urls import path

from portal.web.routing import api_by_method
from training import apis, views

page_patterns = [
    path("training/", views.MyTrainingView.as_view(), name="training_me"),
    path("training/matrix/", views.MatrixView.as_view(), name="training_matrix"),
    path("training/matrix.csv", views.MatrixExportView.as_view(), name="training_matrix_csv"),
    path("training/import/", views.ImportView.as_view(), name="training_import"),
    path("training/approvals/", views.ApprovalQueueView.as_view(), name="training_queue"),
    path("training/approvals/<uuid:public_id>/<str:verdict>/", views.ReviewView.as_view(), name="training_review"),
    path("training/courses/", views.CoursesView.as_view(), name="training_courses"),
    path("training/operators/", views.OperatorsView.as_view(), name="training_operators"),
    path("training/people/<uuid:person_id>/", views.PersonTrainingView.as_view(), name="training_person"),
    path("training/completions/<uuid:public_id>/evidence/", views.EvidenceView.as_view(), name="training_evidence"),
]

# Ids in API paths are plain strings: a malformed one is then the same problem+json 404 as a missing one.
api_patterns = [
    path(
        "training/courses/", api_by_method(GET=apis.CourseListApi, POST=apis.CourseCreateApi), name="training_courses"
    ),
    path(
        "training/requirements/",
        api_by_method(GET=apis.RequirementListApi, POST=apis.RequirementSetApi),
        name="training_requirements",
    ),
    path("training/requirements/<str:public_id>/", apis.RequirementRemoveApi.as_view(), name="training_requirement"),
    path(
        "training/completions/",
        api_by_method(GET=apis.CompletionListApi, POST=apis.CompletionRecordApi),
        name="training_completions",
    ),
    path("training/completions/import/", apis.CompletionImportApi.as_view(), name="training_import"),
    path("training/completions/<str:public_id>/", apis.CompletionGetApi.as_view(), name="training_completion"),
    path("training/completions/<str:public_id>/approve/", apis.CompletionApproveApi.as_view(), name="training_approve"),
    path("training/completions/<str:public_id>/reject/", apis.CompletionRejectApi.as_view(), name="training_reject"),
    path(
        "training/completions/<str:public_id>/supersede/",
        apis.CompletionSupersedeApi.as_view(),
        name="training_supersede",
    ),
    path("training/people/<str:person_id>/status/", apis.PersonStatusApi.as_view(), name="training_person_status"),
    path("training/matrix.csv", apis.MatrixExportApi.as_view(), name="training_matrix_csv"),
]
