"""Routes of the tenants app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

from __future__ import annotations

from django.urls import path

from portal.web.routing import api_by_method
from tenants import apis, views

page_patterns = [
    path("members/", views.MembersView.as_view(), name="members"),
    path("members/add/", views.MemberAddView.as_view(), name="member_add"),
    path("members/<uuid:public_id>/role/", views.MemberRoleView.as_view(), name="member_role"),
    path("members/<uuid:public_id>/end-date/", views.MemberEndDateView.as_view(), name="member_end_date"),
    path("members/<uuid:public_id>/end/", views.MemberEndView.as_view(), name="member_end"),
    path("tokens/", views.ApiTokensView.as_view(), name="api_tokens"),
    path("tokens/<uuid:public_id>/revoke/", views.ApiTokenRevokeView.as_view(), name="api_token_revoke"),
]

# Ids in API paths are plain strings: a malformed one is then the same problem+json 404 as a missing one.
api_patterns = [
    path("members/", api_by_method(GET=apis.MemberListApi, POST=apis.MemberAddApi), name="members"),
    path(
        "members/<str:public_id>/",
        api_by_method(GET=apis.MemberGetApi, PATCH=apis.MemberUpdateApi),
        name="member",
    ),
    path("members/<str:public_id>/end/", apis.MemberEndApi.as_view(), name="member_end"),
    path("tokens/", api_by_method(GET=apis.ApiTokenListApi, POST=apis.ApiTokenCreateApi), name="api_tokens"),
    path("tokens/<str:public_id>/", apis.ApiTokenRevokeApi.as_view(), name="api_token"),
]
