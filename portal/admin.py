"""The operators' admin at /ops/: platform staff only, with MFA, and no patient data.

django-otp's `OTPAdminSite` (as its docs say: `admin.site.__class__ = OTPAdminSite`) treats a staff user whose
session has not passed TOTP as not staff at all. Its sign-in goes through the portal's own sign-in pages, so
operators meet the same lockout, MFA and audit trail as everyone else.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django_otp.admin import OTPAdminSite
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.web.pages import mfa_gate
from tenants.scoping import platform_scope


class OpsAdminSite(OTPAdminSite):
    site_header = "Enclave operations"
    site_title = "Enclave operations"
    index_title = "Platform administration"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        from studies.selectors import BUILTIN_SCANNER, scanner_description

        scanner = scanner_description()
        context = {"malware_scanner": scanner, "malware_scanner_builtin": scanner == BUILTIN_SCANNER}
        return super().index(request, {**context, **(extra_context or {})})

    def admin_view(self, view: Callable[..., HttpResponse], cacheable: bool = False) -> Callable[..., HttpResponse]:
        """Every /ops/ page is platform work (it reads across tenants, no patient data): it runs, and its template
        renders, in a platform scope, which the database's row-level security lets through (tenants.scoping)."""
        inner = super().admin_view(view, cacheable)

        @wraps(inner)
        def platform_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            with platform_scope():
                response = inner(request, *args, **kwargs)
                if isinstance(response, TemplateResponse) and not response.is_rendered:
                    response.render()
            return response

        return platform_view

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        gate = mfa_gate(request)
        if gate is not None:
            return gate
        return super().login(request, extra_context)


admin.site.__class__ = OpsAdminSite


class AuthenticatorAdmin(admin.ModelAdmin):
    """Which authenticators people have, without their secrets: read-only."""

    list_display = ("user", "name", "confirmed", "created_at", "last_used_at")
    list_filter = ("confirmed",)
    search_fields = ("user__username",)
    fields = list_display
    readonly_fields = list_display
    list_select_related = ["user"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# django-otp's own admins show TOTP keys and QR codes and let staff create authenticators for others.
for model in (TOTPDevice, StaticDevice):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, AuthenticatorAdmin)
