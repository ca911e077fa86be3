"""The pages that belong to no tenant (the home page) and a tenant's own home page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views import View

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
