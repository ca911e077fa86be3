"""Routes of the tenants app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

from __future__ import annotations

from django.urls import path

from portal.web.routing import api_by_method
from tenants import apis, views

page_patterns = [
    path("members/", views.MembersView.as_view(), name="members"),
    path("members/invite/", views.InvitationCreateView.as_view(), name="member_invite"),
    path(
        "members/invitations/<uuid:public_id>/revoke/",
        views.InvitationRevokeView.as_view(),
        name="invitation_revoke",
    ),
    path("members/<uuid:public_id>/unlock/", views.MemberUnlockView.as_view(), name="member_unlock"),
    path("members/<uuid:public_id>/role/", views.MemberRoleView.as_view(), name="member_role"),
    path("members/<uuid:public_id>/end-date/", views.MemberEndDateView.as_view(), name="member_end_date"),
    path("members/<uuid:public_id>/end/", views.MemberEndView.as_view(), name="member_end"),
    path("members/review/", views.RecertificationView.as_view(), name="recertification"),
    path(
        "members/review/<uuid:public_id>/decide/",
        views.RecertificationDecideView.as_view(),
        name="recertification_decide",
    ),
    path("tokens/", views.ApiTokensView.as_view(), name="api_tokens"),
    path("tokens/<uuid:public_id>/revoke/", views.ApiTokenRevokeView.as_view(), name="api_token_revoke"),
    path("networks/", views.TrustedNetworksView.as_view(), name="networks"),
    path("settings/exports/", views.ExportPolicyView.as_view(), name="export_policy"),
    path("networks/<uuid:public_id>/remove/", views.TrustedNetworkRemoveView.as_view(), name="network_remove"),
]

# Ids in API paths are plain strings: a malformed one is then the same problem+json 404 as a missing one.
api_patterns = [
    path("members/", apis.MemberListApi.as_view(), name="members"),
    path(
        "members/<str:public_id>/",
        api_by_method(GET=apis.MemberGetApi, PATCH=apis.MemberUpdateApi),
        name="member",
    ),
    path("members/<str:public_id>/end/", apis.MemberEndApi.as_view(), name="member_end"),
    path(
        "invitations/",
        api_by_method(GET=apis.InvitationListApi, POST=apis.InvitationCreateApi),
        name="invitations",
    ),
    path(
        "invitations/<str:public_id>/",
        api_by_method(GET=apis.InvitationGetApi, DELETE=apis.InvitationRevokeApi),
        name="invitation",
    ),
    path("tokens/", api_by_method(GET=apis.ApiTokenListApi, POST=apis.ApiTokenCreateApi), name="api_tokens"),
    path("tokens/<str:public_id>/", apis.ApiTokenRevokeApi.as_view(), name="api_token"),
    path(
        "networks/",
        api_by_method(GET=apis.TrustedNetworkListApi, POST=apis.TrustedNetworkCreateApi),
        name="networks",
    ),
    path("networks/<str:public_id>/", apis.TrustedNetworkRemoveApi.as_view(), name="network"),
]

# The invitation link, outside any tenant (the invitee is not a member yet): /invitations/...
invitation_patterns = [
    path("accept/", views.InvitationAcceptView.as_view(), name="accept"),
    path("<str:token>/", views.InvitationOpenView.as_view(), name="open"),
]
