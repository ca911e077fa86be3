"""Routes of the tenants app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path

from portal.api.base import TenantApi
from tenants import apis, views


def api_by_method(**operations: type[TenantApi]) -> Callable[..., HttpResponse]:
    """One URL whose HTTP methods are separate operations, each its own `TenantApi` class (STYLE.md §7), such as
    `GET members/` (list) and `POST members/` (add).

    A method no class handles goes to the first class, which answers 405 after the usual authentication and
    membership checks. `cls` is what drf-spectacular and tests/test_architecture.py read: a `TenantApi` carrying
    every operation's handler (with its `extend_schema`), used only to describe the URL, never to serve it.
    """
    handlers = {method.lower(): api.as_view() for method, api in operations.items()}
    fallback = next(iter(handlers.values()))

    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return handlers.get((request.method or "").lower(), fallback)(request, *args, **kwargs)

    name = "".join(api.__name__.removesuffix("Api") for api in operations.values()) + "Route"
    members = {method.lower(): getattr(api, method.lower()) for method, api in operations.items()}
    view.cls = type(name, (TenantApi,), {**members, "__module__": __name__})  # type: ignore[attr-defined]
    view.initkwargs = {}  # type: ignore[attr-defined]
    view.csrf_exempt = True  # type: ignore[attr-defined]  # DRF's session authentication checks CSRF itself
    return view


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
