"""Sign-in pages: password, then a second factor (enrolment on first sign-in, the code check after), sign-out,
and the invitation link that lets a new person choose their password.

A session is "password-only" between the two steps: authenticated but not OTP-verified. Tenant pages
(`portal.web.pages.mfa_gate`) and the API (`VerifiedSessionAuthentication`) refuse such a session.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import django_otp
import qrcode
import qrcode.image.svg
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.views import PasswordResetConfirmView
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View

from audit.events import EventType
from audit.services import auth_event_record
from portal.accounts import services
from portal.accounts.forms import EnrolForm, LoginForm, MfaForm
from portal.accounts.lockout import lockout_response, mfa_failure_count, sign_in_allowed, username_normalised
from portal.middleware import SESSION_AUTH_AT, SESSION_EXPIRED_REASON, SESSION_LAST_SEEN
from portal.web.limits import limit_hit, limit_hit_record, limited_page
from tenants.mfa import authenticator_get
from tenants.services import session_register

SIGN_IN_REFUSED = "The user name or password is not right."
WRONG_CODE = "That code is not right, or it was already used. Wait for the next code in your app and try again."


def duration_text(delta: timedelta) -> str:
    """15 minutes, 12 hours, 1 second: how long a timeout is, for people."""
    seconds = int(delta.total_seconds())
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def claimed_name_key(username: str) -> str:
    """A claimed user name as the sign-in's rate-limit key: normalised as django-axes counts it ("Alice" and
    " alice" are one name), then digested, so that whatever was typed (spaces, control characters, any script, up to
    the form's 150 characters) makes a short, valid cache key and no typed name is kept in Redis."""
    return "name:" + hashlib.sha256(username_normalised(username).encode()).hexdigest()[:32]


def _safe_next(request: HttpRequest) -> str:
    """Where to go after signing in: `next` when it is a path on this site, else the home page."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if (
        candidate.startswith("/")
        and not candidate.startswith(("//", "/\\"))
        and url_has_allowed_host_and_scheme(candidate, allowed_hosts=None, require_https=request.is_secure())
    ):
        return candidate
    return reverse(settings.LOGIN_REDIRECT_URL)


def _to(url_name: str, next_url: str) -> HttpResponseRedirect:
    return redirect(f"{reverse(url_name)}?{urlencode({'next': next_url})}")


def _qr_data_uri(text: str) -> str:
    """The QR code as an SVG data: URI, made here: no outside service, and the CSP allows `img-src data:`."""
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=10, border=2)
    return "data:image/svg+xml;base64," + base64.b64encode(image.to_string()).decode("ascii")


def _verified(request: HttpRequest) -> bool:
    """Signed in with both factors (`is_verified` is django-otp's, installed by its OTPMiddleware)."""
    user: Any = request.user
    return bool(user.is_authenticated and user.is_verified())


def _second_step_redirect(request: HttpRequest, next_url: str) -> HttpResponse | None:
    """Where a visitor of an MFA page belongs instead, or None when the page is theirs: signed in with a
    password, not yet with a second factor."""
    if not request.user.is_authenticated:
        return _to("accounts:login", next_url)
    if _verified(request):
        return redirect(next_url)
    return None


class LoginView(View):
    """/accounts/login/ : the password step. Failures count per (user name, address) in django-axes; the audit
    records (LOGIN_FAILED, LOCKED_OUT) are written by `portal.accounts.signals`."""

    template_name = "accounts/login.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        next_url = _safe_next(request)
        if _verified(request):
            return redirect(next_url)
        expired = request.session.pop(SESSION_EXPIRED_REASON, None)
        if expired == "idle":
            messages.info(
                request,
                f"You were signed out after {duration_text(settings.SESSION_IDLE_TIMEOUT)} without activity. "
                "Please sign in again.",
            )
        elif expired:
            messages.info(
                request,
                f"You were signed out because a session lasts at most "
                f"{duration_text(settings.SESSION_ABSOLUTE_TIMEOUT)}. Please sign in again.",
            )
        return self._render(request, LoginForm(), next_url)

    def post(self, request: HttpRequest) -> HttpResponse:
        next_url = _safe_next(request)
        form = LoginForm(request.POST)
        if not form.is_valid():
            return self._render(request, form, next_url, status=400)
        # RATE_LIMITS["login"]: per claimed user name and per address, before any password is checked (django-axes
        # still locks a user name out of an address after AXES_FAILURE_LIMIT wrong ones).
        limited = limit_hit("login", person=claimed_name_key(form.cleaned_data["username"]),
                            address=request.META.get("REMOTE_ADDR"))  # fmt: skip
        if limited is not None:
            limit_hit_record(limited, door="sign-in")
            return limited_page(request, limited)
        user = authenticate(
            request=request, username=form.cleaned_data["username"], password=form.cleaned_data["password"]
        )
        if getattr(request, "axes_locked_out", False):
            return lockout_response(request)
        if user is None:
            form.add_error(None, SIGN_IN_REFUSED)
            return self._render(request, form, next_url)
        login(request, user)
        session_register(user=user, session_key=request.session.session_key or "")
        now = time.time()
        request.session[SESSION_AUTH_AT] = now
        request.session[SESSION_LAST_SEEN] = now
        if authenticator_get(user=user) is None:
            return _to("accounts:mfa_setup", next_url)
        return _to("accounts:mfa", next_url)

    def _render(self, request: HttpRequest, form: LoginForm, next_url: str, status: int = 200) -> HttpResponse:
        return render(request, self.template_name, {"form": form, "next": next_url}, status=status)


class MfaSetupView(View):
    """/accounts/mfa/setup/ : first sign-in. Scan the QR code (or type the key), confirm with a code, receive
    backup codes once. Only for a password-authenticated person who has no confirmed authenticator yet."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        next_url = _safe_next(request)
        elsewhere = _second_step_redirect(request, next_url)
        if elsewhere is not None:
            return elsewhere
        if authenticator_get(user=request.user) is not None:
            return _to("accounts:mfa", next_url)
        self.next_url = next_url
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._render(request, EnrolForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        form = EnrolForm(request.POST)
        if not form.is_valid():
            return self._render(request, form, status=400)
        device = services.authenticator_pending_get_or_create(user=request.user)
        enrolled = services.authenticator_enrol(user=request.user, device=device, token=form.cleaned_data["otp_token"])
        if enrolled is None:
            form.add_error("otp_token", WRONG_CODE)
            return self._render(request, form)
        device, codes = enrolled
        _second_factor_passed(request, device)
        return render(request, "accounts/backup_codes.html", {"codes": codes, "next": self.next_url})

    def _render(self, request: HttpRequest, form: EnrolForm, status: int = 200) -> HttpResponse:
        device = services.authenticator_pending_get_or_create(user=request.user)
        context = {
            "form": form,
            "next": self.next_url,
            "secret": base64.b32encode(device.bin_key).decode("ascii").rstrip("="),
            "qr_data_uri": _qr_data_uri(device.config_url),
            "issuer": settings.OTP_TOTP_ISSUER,
        }
        return render(request, "accounts/mfa_setup.html", context, status=status)


def _second_factor_passed(request: HttpRequest, device: Any) -> None:
    """The session is verified from here on, under a new key: a key anyone learned before this step (planted,
    or seen while only the password was done) is worth nothing afterwards. The new key is registered so that
    deactivation still finds it."""
    django_otp.login(request, device)
    request.session.cycle_key()
    session_register(user=request.user, session_key=request.session.session_key or "")  # type: ignore[arg-type]


class MfaView(View):
    """/accounts/mfa/ : the second factor at each sign-in, a code of the authenticator app or a backup code.
    Wrong codes count toward the same lockout as wrong passwords; the one that reaches the limit signs the
    person out."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        next_url = _safe_next(request)
        elsewhere = _second_step_redirect(request, next_url)
        if elsewhere is not None:
            return elsewhere
        if authenticator_get(user=request.user) is None:
            return _to("accounts:mfa_setup", next_url)
        if not sign_in_allowed(request, username=request.user.get_username()):
            logout(request)
            return lockout_response(request)
        self.next_url = next_url
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._render(request, MfaForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        form = MfaForm(request.POST)
        if not form.is_valid():
            return self._render(request, form, status=400)
        user = request.user
        limited = limit_hit("login", person=str(user.pk), address=request.META.get("REMOTE_ADDR"))
        if limited is not None:
            limit_hit_record(limited, actor=user, door="sign-in")
            return limited_page(request, limited)
        check = services.mfa_check(user=user, token=form.cleaned_data["otp_token"])
        if check.ok:
            _second_factor_passed(request, check.device)
            if check.backup_codes_left is not None:
                messages.warning(
                    request,
                    f"You signed in with a backup code; {check.backup_codes_left} left. Each works only once.",
                )
            return redirect(self.next_url)
        if mfa_failure_count(request, username=user.get_username()):
            logout(request)
            return lockout_response(request)
        if check.retry_after:
            form.add_error("otp_token", f"Too many wrong codes: wait {check.retry_after} seconds, then try again.")
        else:
            form.add_error("otp_token", WRONG_CODE)
        return self._render(request, form)

    def _render(self, request: HttpRequest, form: MfaForm, status: int = 200) -> HttpResponse:
        return render(request, "accounts/mfa.html", {"form": form, "next": self.next_url}, status=status)


class LogoutView(View):
    """/accounts/logout/ (POST only, from the sign-out button): LOGOUT on the audit trail, the session deleted."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            auth_event_record(event=EventType.LOGOUT, user=request.user)
            logout(request)
            messages.success(request, "You have signed out.")
        return redirect("accounts:login")


class SetPasswordView(PasswordResetConfirmView):
    """/accounts/set-password/<uidb64>/<token>/ : the link of the invitation email. Django's reset view: the token
    moves out of the URL into the session on the first visit (so it does not leak in a Referer), it works until
    the password changes, and the password validators apply."""

    template_name = "accounts/set_password.html"
    success_url = reverse_lazy("accounts:login")
    post_reset_login = False

    def get_user(self, uidb64: str) -> Any:
        user = super().get_user(uidb64)
        return user if user is not None and user.is_active else None

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        messages.success(self.request, "Your password is set. Sign in with your user name and the new password.")
        return response

    def render_to_response(self, context: dict[str, Any], **kwargs: Any) -> HttpResponse:
        if not context.get("validlink"):
            kwargs["status"] = 400
        return super().render_to_response(context, **kwargs)
