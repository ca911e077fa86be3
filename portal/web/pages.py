"""The base class of every tenant page under /t/<tenant>/, and the MFA gate every signed-in page passes."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View

from audit.services import access_denied_record, not_found_record
from portal.web.actor import actor_set
from portal.web.errors import route_identifier
from portal.web.limits import limit_hit_record, limited_page, request_limit_hit
from tenants import access
from tenants.models import Membership, Tenant
from tenants.scoping import tenant_scope
from tenants.selectors import tenant_get_for_member
from tenants.services import network_require

GUARDED = ("dispatch", "setup")


def mfa_gate(request: HttpRequest) -> HttpResponse | None:
    """The redirect a page must answer with when the visitor has not signed in with both factors, else None."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("accounts:login"))
    if not user.is_verified():  # type: ignore[union-attr,attr-defined]  # set by django-otp's middleware
        return redirect(f"{reverse('accounts:mfa')}?next={request.path}")
    return None


class TenantPageView(View):
    """Signed in with MFA, a current member of the tenant in the URL (else 404), then the tenant scope and the
    auditlog actor are open while the handler runs. `self.tenant`, `self.membership`, `self.perms` are set.
    `required_permission`, when set, is a tenant permission without which a member gets a 403 (and the refusal
    is on the audit trail); a non-member gets a 404 whatever the page."""

    tenant: Tenant
    membership: Membership
    perms: frozenset[str]
    required_permission: ClassVar[str | None] = None
    # The RATE_LIMITS action this page counts against ("search", "retrieve", "export"), if any: a 429 page past it.
    rate_limit: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in GUARDED if name in cls.__dict__]
        if overridden:
            raise TypeError(f"{cls.__name__} may not override {', '.join(overridden)}: TenantPageView enforces them.")

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        gate = mfa_gate(request)
        if gate is not None:
            return gate
        try:
            tenant, membership = tenant_get_for_member(user=request.user, slug=kwargs.get("tenant", ""))
        except access.NotVisible as exc:
            raise Http404() from exc
        try:  # the tenant's trusted networks, before anything of it is read
            network_require(tenant=tenant, address=request.META.get("REMOTE_ADDR"), door="pages", actor=request.user)
        except access.NetworkRefused as outside:
            return render(request, "_error.html", {"error_code": 403, "error_title": "Not from this network",
                                                   "error_text": str(outside)}, status=403)  # fmt: skip
        if self.rate_limit:
            limited = request_limit_hit(self.rate_limit, request)
            if limited is not None:
                limit_hit_record(limited, actor=request.user, tenant=tenant, door="pages")
                return limited_page(request, limited)
        self.tenant, self.membership = tenant, membership
        request.tenant = tenant  # type: ignore[attr-defined]
        with tenant_scope(tenant), actor_set(request.user, remote_addr=request.META.get("REMOTE_ADDR")):
            self.perms = access.tenant_permissions(request.user, tenant)
            try:
                if self.required_permission and self.required_permission not in self.perms:
                    raise access.Forbidden()
                response = super().dispatch(request, *args, **kwargs)
            except access.Forbidden as exc:
                refusal = exc if isinstance(exc, access.GateRefused) else None
                access_denied_record(actor=request.user, where=type(self).__name__, method=request.method or "",
                                     code=refusal.code if refusal else "", reason=str(refusal or ""))  # fmt: skip
                if refusal is not None:  # say why and what to do, not a bare 403
                    return self.render(request, "portal/refused.html", {"refusal": refusal}, status=403)
                raise PermissionDenied(str(exc)) from exc
            except (access.NotVisible, Http404) as exc:
                not_found_record(actor=request.user, where=type(self).__name__, method=request.method or "",
                                 identifier=route_identifier(kwargs))  # fmt: skip
                raise Http404() from exc
            if hasattr(response, "render") and callable(response.render):
                response.render()  # templates read the scope: render inside it
            return response

    def render(
        self, request: HttpRequest, template: str, context: dict[str, Any] | None = None, **kw: Any
    ) -> HttpResponse:
        base = {"tenant": self.tenant, "membership": self.membership, "perms": self.perms}
        return render(request, template, {**base, **(context or {})}, **kw)
