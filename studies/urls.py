"""Routes of the studies app: pages under /t/<tenant>/ and the REST API under /api/v1/t/<tenant>/."""

from django.urls import path

from portal.web.routing import api_by_method
from studies.apis import break_glass as break_glass_apis
from studies.apis import retention as retention_apis
from studies.apis import shares as share_apis
from studies.views import break_glass, exports, ingest, retention, shares, studies, study

page_patterns = [
    path("upload/", ingest.UploadView.as_view(), name="upload"),
    path("upload/files/", ingest.UploadFilesView.as_view(), name="upload_files"),
    path("ingest/", ingest.IngestActivityView.as_view(), name="ingest"),
    path("ingest/batch/<uuid:batch>/", ingest.IngestBatchView.as_view(), name="ingest_batch"),
    path("studies/", studies.StudiesView.as_view(), name="studies"),
    path("studies/<uuid:public_id>/", study.StudyView.as_view(), name="study"),
    path("studies/<uuid:public_id>/history/", study.StudyHistoryView.as_view(), name="study_history"),
    path("series/<uuid:public_id>/thumbnail.png", studies.SeriesThumbnailView.as_view(), name="series_thumbnail"),
    path("studies/<uuid:public_id>/access/", shares.StudyAccessView.as_view(), name="study_access"),
    path(
        "studies/<uuid:public_id>/access/shares/<uuid:share_id>/revoke/",
        shares.ShareRevokeView.as_view(),
        name="share_revoke",
    ),
    path(
        "studies/<uuid:public_id>/access/invitations/<uuid:invitation_id>/withdraw/",
        shares.ShareInvitationWithdrawView.as_view(),
        name="share_invitation_withdraw",
    ),
    path("break-glass/", break_glass.BreakGlassView.as_view(), name="break_glass"),
    path("break-glass/review/", break_glass.BreakGlassReviewView.as_view(), name="break_glass_review"),
    path(
        "break-glass/review/<uuid:public_id>/",
        break_glass.BreakGlassSignOffView.as_view(),
        name="break_glass_sign_off",
    ),
    path("break-glass/<uuid:public_id>/end/", break_glass.BreakGlassEndView.as_view(), name="break_glass_end"),
    path("studies/<uuid:public_id>/export/", exports.StudyExportView.as_view(), name="study_export"),
    path("exports/search/", exports.SearchExportView.as_view(), name="export_search"),
    path("exports/<uuid:public_id>/", exports.ExportProgressView.as_view(), name="export_progress"),
    path("exports/<uuid:public_id>/status.json", exports.ExportStatusView.as_view(), name="export_status"),
    path("exports/<uuid:public_id>/download/", exports.ExportDownloadView.as_view(), name="export_download"),
    path("retention/", retention.RetentionPoliciesView.as_view(), name="retention"),
    path(
        "retention/policies/<uuid:public_id>/stop/",
        retention.RetentionPolicyStopView.as_view(),
        name="retention_policy_stop",
    ),
    path("retention/proposals/", retention.RetentionProposalsView.as_view(), name="retention_proposals"),
    path(
        "retention/proposals/<uuid:public_id>/",
        retention.RetentionProposalDecideView.as_view(),
        name="retention_proposal_decide",
    ),
    path("retention/holds/", retention.LegalHoldsView.as_view(), name="retention_holds"),
    path("retention/holds/<uuid:public_id>/lift/", retention.LegalHoldLiftView.as_view(), name="retention_hold_lift"),
]
api_patterns: list = [
    path("studies/<str:public_id>/shares/", share_apis.ShareCreateApi.as_view(), name="study_shares"),
    path(
        "studies/<str:public_id>/shares/invitations/",
        share_apis.ShareInvitationCreateApi.as_view(),
        name="study_share_invitations",
    ),
    path(
        "studies/<str:public_id>/shares/invitations/<str:invitation_id>/",
        share_apis.ShareInvitationWithdrawApi.as_view(),
        name="study_share_invitation",
    ),
    path("studies/<str:public_id>/shares/<str:share_id>/", share_apis.ShareRevokeApi.as_view(), name="study_share"),
    path("break-glass/", break_glass_apis.BreakGlassStartApi.as_view(), name="break_glass"),
    path(
        "retention/policies/",
        api_by_method(GET=retention_apis.PolicyListApi, POST=retention_apis.PolicyCreateApi),
        name="retention_policies",
    ),
    path(
        "retention/policies/<str:public_id>/stop/",
        retention_apis.PolicyStopApi.as_view(),
        name="retention_policy_stop",
    ),
    path("retention/proposals/", retention_apis.ProposalListApi.as_view(), name="retention_proposals"),
    path(
        "retention/proposals/<str:public_id>/approve/",
        retention_apis.ProposalApproveApi.as_view(),
        name="retention_proposal_approve",
    ),
    path(
        "retention/proposals/<str:public_id>/reject/",
        retention_apis.ProposalRejectApi.as_view(),
        name="retention_proposal_reject",
    ),
    path(
        "retention/holds/",
        api_by_method(GET=retention_apis.HoldListApi, POST=retention_apis.HoldPlaceApi),
        name="retention_holds",
    ),
    path("retention/holds/<str:public_id>/lift/", retention_apis.HoldLiftApi.as_view(), name="retention_hold_lift"),
]
