"""django-axes glue: one lockout counter per (user name, address) for both factors, and the page a locked-out
person sees. Axes calls `axes_username` and `lockout_response` through settings (AXES_USERNAME_CALLABLE,
AXES_LOCKOUT_CALLABLE), so the Django admin's login gets the same behaviour as ours."""

from __future__ import annotations

import math
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def axes_username(request: HttpRequest, credentials: dict[str, Any] | None = None) -> str | None:
    """The user name attempts are counted under. User names are unique in any case, so "Alice" and "alice"
    must share one counter, or changing the case of one letter would buy five more guesses."""
    username = (credentials or {}).get("username")
    if username is None:
        username = request.POST.get("username")
    if not username:
        return None
    return username_normalised(username)


def username_normalised(username: Any) -> str:
    """A typed user name as attempts are counted under it: without surrounding blanks, in lower case."""
    return str(username).strip().lower()


def cool_off_minutes(request: HttpRequest | None = None) -> int:
    cool_off = get_cool_off(request)
    return max(1, math.ceil(cool_off.total_seconds() / 60)) if cool_off else 0


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """429 with a page a person understands (also what AxesMiddleware answers with, via AXES_LOCKOUT_CALLABLE)."""
    minutes = cool_off_minutes(request)
    response = render(request, "accounts/locked_out.html", {"minutes": minutes}, status=429)
    if minutes:
        response["Retry-After"] = str(minutes * 60)
    return response


def sign_in_allowed(request: HttpRequest, *, username: str) -> bool:
    """False while `username` is locked out from this address (by wrong passwords or wrong codes)."""
    return bool(AxesProxyHandler.is_allowed(request, {"username": username}))


def mfa_failure_count(request: HttpRequest, *, username: str) -> bool:
    """Count a wrong MFA code like a wrong password, in axes' counter for (user name, address).

    Returns True when this failure locks the person out (axes then sends `user_locked_out`, which the audit
    receiver records). A password sign-in resets the counter, so the device's own throttling (django-otp doubles
    the wait after each wrong code, and only a right code resets it) is what bounds guessing across sign-ins.
    """
    AxesProxyHandler.user_login_failed(sender=__name__, credentials={"username": username}, request=request)
    return bool(getattr(request, "axes_locked_out", False))
