"""Request-wide security: the client address, request ids and audit context, HTTPS only for machines, automatic
logoff, security headers, and the way past the browser's middleware for a bearer-token DICOMweb read."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from audit.context import audit_context
from audit.events import EventType
from audit.services import auth_event_record
from portal.web.addresses import FORWARDED_KEY, PEER_ADDRESS_KEY, client_address_of, header_meta_key
from portal.web.errors import PROBLEM_CONTENT_TYPE, problem

SESSION_AUTH_AT = "enclave_auth_at"
SESSION_LAST_SEEN = "enclave_last_seen"
SESSION_EXPIRED_REASON = "enclave_expired"  # in the new anonymous session: the sign-in page says why


class ClientAddressMiddleware:
    """Resolve the client's address once (portal.web.addresses) and put it in REMOTE_ADDR, keeping the TCP peer
    under PEER_ADDRESS_KEY; then drop the proxy header, so that nothing downstream (django-auditlog reads
    X-Forwarded-For itself, django-axes, logs) can be fooled by a header the client wrote."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        client = client_address_of(meta)
        meta[PEER_ADDRESS_KEY] = meta.get("REMOTE_ADDR", "")
        meta["REMOTE_ADDR"] = client or meta.get("REMOTE_ADDR", "")
        for header in {settings.TRUSTED_PROXY_HEADER, "X-Forwarded-For"}:
            if meta.pop(header_meta_key(header), None) is not None:
                meta[FORWARDED_KEY] = True  # a proxy stood between (for URLs we build; never for an address)
        return self.get_response(request)


class RequestSizeLimitMiddleware:
    """Every request body bounded by its declared length before anything reads it (CSRF reads a form's body, so this
    comes first): REQUEST_MAX_BYTES, or for a view that takes large bodies the setting its class names in
    `max_request_bytes_setting` (the browser upload; STOW-RS, whose streaming parser also counts what it reads).
    Over it: 413, a problem document for the API and DICOMweb, the error page otherwise. A form body is further
    bounded by Django's DATA_UPLOAD_MAX_MEMORY_SIZE once read."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        view_class = getattr(view, "view_class", None) or getattr(view, "cls", None)
        by_method = getattr(view, "max_request_bytes_settings", None) or {}  # portal.web.routing.api_by_method
        setting = (
            by_method.get(request.method or "")
            or getattr(view_class, "max_request_bytes_setting", None)
            or "REQUEST_MAX_BYTES"
        )
        limit = int(getattr(settings, setting))
        if 0 <= length <= limit:
            return None
        detail = f"The request body is larger than the limit of {limit} bytes." if length > 0 else "Bad Content-Length."
        status = 413 if length > 0 else 400
        title = "Content too large" if status == 413 else "Invalid request"
        return _refusal(request, status, title, detail, code="too_large", page_title="Too large")


def _refusal(request: HttpRequest, status: int, title: str, detail: str, *, code: str, page_title: str) -> HttpResponse:
    """A refusal before any view runs: a problem document for the API and DICOMweb, the error page otherwise."""
    if request.path.startswith(("/api/", "/dicomweb/")):
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}
        return JsonResponse(body, status=status, content_type="application/problem+json")
    return render(request, "_error.html", {"error_code": status, "error_title": page_title, "error_text": detail},
                  status=status)  # fmt: skip


class NulRefusalMiddleware:
    """A NUL character in the path or the query string is a 400 before any view runs: no identifier, file name or
    search term contains one, PostgreSQL refuses it in text (a DataError, hence a 500, wherever a view looked it
    up), and a file API may cut a name at it (SECURITY.md G10). Form and JSON fields are refused by their own
    validators (Django's and DRF's CharField prohibit NUL)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "\x00" in query or "%00" in query:
            detail = "The request's address contains a NUL character."
            return _refusal(request, 400, "Invalid request", detail, code="nul_character", page_title="Bad request")
        return self.get_response(request)


class RequestIdMiddleware:
    """Give every request an id (kept from X-Request-ID when well-formed) and open the audit context with it and
    the caller's address, so every audit event of the request carries both."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if 8 <= len(incoming) <= 64 and incoming.replace("-", "").isalnum() else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        with audit_context(request_id=request_id, source_address=request.META.get("REMOTE_ADDR")):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class HttpsOnlyMiddleware:
    """SECURITY.md A9: with SECURE_SSL_REDIRECT on (production), a plain-HTTP call to the API or DICOMweb
    (HTTPS_ONLY_PATHS) is refused with a 403 problem document and no data, never redirected. A redirect would be
    followed by clients that have already sent their bearer token in the clear, and would hide the mistake from
    whoever configured them; browsers' pages are redirected by SecurityMiddleware, then kept on HTTPS by HSTS."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            settings.SECURE_SSL_REDIRECT
            and not request.is_secure()
            and request.path.startswith(tuple(settings.HTTPS_ONLY_PATHS))
        ):
            body = problem(403, "This service answers only over HTTPS.", code="https_required")
            response = JsonResponse(body, status=403, content_type=PROBLEM_CONTENT_TYPE)
            response["Cache-Control"] = "no-store"
            return response
        return self.get_response(request)


class SessionTimeoutMiddleware:
    """Automatic logoff (HIPAA 164.312(a)(2)(iii)): after SESSION_IDLE_TIMEOUT without a request, or
    SESSION_ABSOLUTE_TIMEOUT after sign-in whatever the activity. The session is deleted on the server and the
    logoff is on the audit trail; the request goes on as anonymous (a page redirects to sign-in, the API 401s)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            now = time.time()
            session = request.session
            last_seen = session.get(SESSION_LAST_SEEN, now)
            auth_at = session.get(SESSION_AUTH_AT, now)
            reason = ""
            if now - last_seen > settings.SESSION_IDLE_TIMEOUT.total_seconds():
                reason = "idle"
            elif now - auth_at > settings.SESSION_ABSOLUTE_TIMEOUT.total_seconds():
                reason = "absolute"
            if reason:
                user = request.user
                logout(request)
                auth_event_record(
                    event=EventType.SESSION_EXPIRED,
                    user=user,
                    system_principal="enclave:session-timeout",
                    extra={"reason": reason},
                )
                request.session_expired = reason  # type: ignore[attr-defined]
                request.session[SESSION_EXPIRED_REASON] = reason
            else:
                session[SESSION_LAST_SEEN] = now
                session.setdefault(SESSION_AUTH_AT, now)
        return self.get_response(request)


class SecurityHeadersMiddleware:
    """Headers Django 5.2 does not send itself: CSP, Permissions-Policy, and no caching of signed-in pages."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith(settings.STATIC_URL):
            response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
            response.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
            response["Cache-Control"] = "no-store"
        return response


class DicomWebCorsMiddleware:
    """CORS for DICOMweb only (/dicomweb/), and only for the origins in settings.DICOMWEB_CORS_ORIGINS, so a
    browser viewer such as OHIF served elsewhere can search and retrieve with a bearer token. Preflight requests
    (OPTIONS with Access-Control-Request-Method) are answered here, before authentication, as browsers send them
    without credentials. No cookies cross origins (no Allow-Credentials): the token travels in Authorization.
    Any other origin gets no CORS header at all, so the browser refuses to hand it the response."""

    ALLOW_METHODS = "GET, POST, OPTIONS"
    ALLOW_HEADERS = "Authorization, Accept, Content-Type, X-Request-ID"
    EXPOSE_HEADERS = "Content-Type, Content-Length, Warning, X-Request-ID"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/dicomweb/"):
            return self.get_response(request)
        origin = request.headers.get("Origin", "")
        allowed = bool(origin) and origin in settings.DICOMWEB_CORS_ORIGINS
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = HttpResponse(status=204)
            if allowed:
                response["Access-Control-Allow-Methods"] = self.ALLOW_METHODS
                response["Access-Control-Allow-Headers"] = self.ALLOW_HEADERS
                response["Access-Control-Max-Age"] = "600"
        else:
            response = self.get_response(request)
        if allowed:
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Expose-Headers"] = self.EXPOSE_HEADERS
        response["Vary"] = ", ".join(filter(None, [response.get("Vary", ""), "Origin"]))
        return response


def bearer_read(request: HttpRequest) -> bool:
    """A machine's read of DICOMweb: a GET or HEAD under /dicomweb/ with `Authorization: Bearer <token>` (the
    form portal.web.authentication reads, which then decides on the token alone: it answers or refuses, never
    falls back to a session) and no cookie at all. Anything else, a request with a session cookie above all, is
    not one."""
    meta = request.META
    if request.method not in ("GET", "HEAD") or meta.get("HTTP_COOKIE") or not request.path.startswith("/dicomweb/"):
        return False
    parts = meta.get("HTTP_AUTHORIZATION", "").split()
    return len(parts) == 2 and parts[0].lower() == "bearer"


_LOADING = threading.local()  # what BrowserEndMiddleware hands to BearerReadMiddleware while Django loads MIDDLEWARE


class BearerReadMiddleware:
    """The browser's middleware (in MIDDLEWARE between this and `BrowserEndMiddleware`: sessions, CSRF, Django's
    authentication, django-otp, automatic logoff, django-auditlog's context, messages, django-axes) serves every
    request but a bearer-token DICOMweb read (`bearer_read`), which goes straight past it. Such a request carries
    no cookie, so it has no session to read, time out or verify, no CSRF cookie (a safe method, and every API view
    is exempt: DRF checks CSRF for session authentication itself) and no messages; django-axes acts only on
    sign-in attempts. The bearer token is then checked in the view (DRF), and after it the rate limits,
    membership, trusted networks, tenant scope and django-auditlog's actor (portal.web.api.TenantApi opens the
    actor's context itself when no middleware did: portal.web.actor.actor_set). `request.user` is anonymous until
    DRF's authentication names the caller, as AuthenticationMiddleware leaves it for a request without a session.
    The browser's middleware stays listed in MIDDLEWARE (Django's, the admin's and django-axes' checks read it
    there), and its `process_view` hooks (CSRF's) run for every request as before."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        past = getattr(_LOADING, "past_browser", None)
        _LOADING.past_browser = None
        if past is None:
            raise ImproperlyConfigured("BearerReadMiddleware needs BrowserEndMiddleware after it in MIDDLEWARE.")
        self.past_browser: Callable[[HttpRequest], HttpResponse] = past

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if bearer_read(request):
            request.user = AnonymousUser()
            return self.past_browser(request)
        return self.get_response(request)


class BrowserEndMiddleware:
    """The end of the browser's middleware in MIDDLEWARE (see `BearerReadMiddleware`): Django loads MIDDLEWARE
    from the last to the first, so this hands what follows it to the BearerReadMiddleware loaded next before it,
    and takes no part in a request (MiddlewareNotUsed)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        _LOADING.past_browser = get_response
        raise MiddlewareNotUsed
