"""Pages of members and API tokens, under /t/<tenant>/.

Changes are POSTs that call one service and redirect back with a message (post/redirect/get); a refused change
renders the page again with the reason, next to the form that caused it. Listing members is a read of who has
access, not of patient data, so it writes no audit event; every change does, in its service.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, cast
from uuid import UUID

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from portal.web.pages import TenantPageView
from tenants import selectors, services
from tenants.forms import (
    ApiTokenCreateForm,
    MemberAddForm,
    MemberEndDateForm,
    MemberEndForm,
    MemberRoleForm,
    errors_apply,
)
from tenants.models import ApiToken, Membership, Role, User

MEMBERS_PER_PAGE = 50


def _messages_of(form: forms.Form) -> list[str]:
    return [str(message) for errors in form.errors.values() for message in errors]


def members_page(
    view: TenantPageView,
    request: HttpRequest,
    *,
    add_form: MemberAddForm | None = None,
    failed: tuple[UUID, list[str]] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The members page; `failed` is the member whose form was refused, with the reasons to show beside it."""
    memberships = selectors.membership_list(actor=request.user)
    page = Paginator(memberships, MEMBERS_PER_PAGE).get_page(request.GET.get("page"))
    rows = [
        {
            "membership": membership,
            "is_self": membership.user_id == request.user.pk,
            "is_current": membership.is_current(),
            "errors": failed[1] if failed is not None and failed[0] == membership.public_id else [],
        }
        for membership in page
    ]
    context = {
        "page": page,
        "rows": rows,
        "roles": Role.choices,
        "can_manage": "tenants.manage_members" in view.perms,
        "add_form": add_form or MemberAddForm(),
    }
    return view.render(request, "tenants/members.html", context, status=status)


class MembersView(TenantPageView):
    """Who has access to the tenant, in which role and until when. Tenant admins also change it here."""

    required_permission = "tenants.view_members"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return members_page(self, request)


class MemberAddView(TenantPageView):
    required_permission = "tenants.manage_members"

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = MemberAddForm(request.POST)
        if form.is_valid():
            try:
                membership = services.membership_add(actor=request.user, tenant=self.tenant, **form.service_arguments())
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(
                    request,
                    f"{membership.user.username} was added as {membership.get_role_display().lower()}. "
                    "A new account gets an email with a link to choose its password.",
                )
                return redirect("portal:members", tenant=self.tenant.slug)
        messages.error(request, "The member was not added: see the reasons in the form.")
        return members_page(self, request, add_form=form, status=400)


class MemberActionView(TenantPageView, ABC):
    """A change to one member, found by the membership's public id (another tenant's id is a 404)."""

    required_permission = "tenants.manage_members"
    form_class: ClassVar[type[forms.Form]]

    @abstractmethod
    def act(self, request: HttpRequest, membership: Membership, form: Any) -> str:
        """Call the service; return the message to show on success."""

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        membership = selectors.membership_get(actor=request.user, public_id=public_id)
        form = self.form_class(request.POST)
        if form.is_valid():
            try:
                message = self.act(request, membership, form)
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(request, message)
                return redirect("portal:members", tenant=self.tenant.slug)
        messages.error(request, f"Nothing was changed for {membership.user.username}: {' '.join(_messages_of(form))}")
        return members_page(self, request, failed=(membership.public_id, _messages_of(form)), status=400)


class MemberRoleView(MemberActionView):
    form_class = MemberRoleForm

    def act(self, request: HttpRequest, membership: Membership, form: MemberRoleForm) -> str:
        membership = services.membership_change_role(
            actor=request.user, membership=membership, role=form.cleaned_data["role"]
        )
        return f"{membership.user.username} is now {membership.get_role_display().lower()}."


class MemberEndDateView(MemberActionView):
    form_class = MemberEndDateForm

    def act(self, request: HttpRequest, membership: Membership, form: MemberEndDateForm) -> str:
        membership = services.membership_set_end(
            actor=request.user, membership=membership, ends_at=form.ends_at_value()
        )
        if membership.ends_at is None:
            return f"{membership.user.username}'s membership no longer has an end date."
        return f"{membership.user.username}'s access ends on {membership.ends_at:%Y-%m-%d %H:%M} UTC."


class MemberEndView(MemberActionView):
    form_class = MemberEndForm

    def act(self, request: HttpRequest, membership: Membership, form: MemberEndForm) -> str:
        membership = services.membership_end(
            actor=request.user, membership=membership, reason=form.cleaned_data["reason"]
        )
        message = f"{membership.user.username}'s membership has ended; their sessions and API tokens were ended too."
        if not membership.user.is_active:
            message += " The account belonged to no other organisation, so it is deactivated."
        return message


class ApiTokensView(TenantPageView):
    """My API tokens in this tenant. Every member may create and revoke their own."""

    def page(
        self,
        request: HttpRequest,
        form: ApiTokenCreateForm,
        *,
        new: tuple[ApiToken, str] | None = None,
        status: int = 200,
    ) -> HttpResponse:
        context = {"tokens": selectors.api_token_list(actor=request.user), "form": form, "new": new}
        return self.render(request, "tenants/api_tokens.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self.page(request, ApiTokenCreateForm())

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = ApiTokenCreateForm(request.POST)
        if form.is_valid():
            try:
                token, raw = services.api_token_create(
                    actor=cast(User, request.user),
                    tenant=self.tenant,
                    name=form.cleaned_data["name"],
                    days=form.cleaned_data["days"],
                )
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                # The token is shown in this response and never again, so it is not put in the session (which is
                # stored server-side) for a redirect to pick up. The page is sent with Cache-Control: no-store.
                return self.page(request, ApiTokenCreateForm(), new=(token, raw))
        return self.page(request, form, status=400)


class ApiTokenRevokeView(TenantPageView):
    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        token = selectors.api_token_get(actor=request.user, public_id=public_id)
        services.api_token_revoke(actor=cast(User, request.user), token=token)
        messages.success(request, f"The token “{token.name}” ({token.prefix}…) is revoked: it no longer works.")
        return redirect("portal:api_tokens", tenant=self.tenant.slug)
