"""The pages that belong to no tenant (the home page, the health probe) and a tenant's own home page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views import View

from portal.web.health import health_check
from portal.web.pages import TenantPageView, mfa_gate
from tenants.access import tenant_list_for_user


class HomeView(View):
    """/ : the tenants the signed-in person belongs to; with exactly one, straight to it."""

    def get(self, request: HttpRequest) -> HttpResponse:
        gate = mfa_gate(request)
        if gate is not None:
            return gate
        tenants = tenant_list_for_user(user=request.user)
        if len(tenants) == 1:
            return redirect("portal:tenant_home", tenant=tenants[0][0].slug)
        return render(request, "portal/home.html", {"tenants": tenants})


class TenantHomeView(TenantPageView):
    """/t/<tenant>/ : what this member can do here."""

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self.render(request, "portal/tenant_home.html")


class HealthView(View):
    """/health/ : for load balancers and monitoring, without credentials. 200 when PostgreSQL and Redis answer
    and the clock is within HEALTH_CLOCK_MAX_OFFSET_SECONDS of PostgreSQL's, else 503; the body says which part
    failed and the offset, nothing of any tenant (portal.web.health)."""

    def get(self, request: HttpRequest) -> HttpResponse:
        health = health_check()
        response = JsonResponse(health.as_dict(), status=200 if health.ok else 503)
        response["Cache-Control"] = "no-store"
        return response
