"""Routing helpers for tenant APIs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from portal.web.api import TenantApi


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
    # The most specific base every operation shares (DicomWebApi for DICOMweb URLs), for the architecture test.
    apis = list(operations.values())
    base = next(c for c in apis[0].__mro__ if issubclass(c, TenantApi) and all(issubclass(a, c) for a in apis))
    view.cls = type(name, (base,), {**members, "__module__": __name__})  # type: ignore[attr-defined]
    view.initkwargs = {}  # type: ignore[attr-defined]
    # The body limit of each operation's class (portal.middleware.RequestSizeLimitMiddleware): the combined `cls`
    # describes the URL and has none of its own, so without this `POST studies` (STOW-RS) was held to
    # REQUEST_MAX_BYTES instead of DICOMWEB_STOW_MAX_REQUEST_BYTES.
    view.max_request_bytes_settings = {  # type: ignore[attr-defined]
        method.upper(): setting
        for method, api in operations.items()
        if (setting := getattr(api, "max_request_bytes_setting", None))
    }
    view.csrf_exempt = True  # type: ignore[attr-defined]  # DRF's session authentication checks CSRF itself
    return view
