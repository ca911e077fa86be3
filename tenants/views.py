"""Pages of members, invitations and API tokens, under /t/<tenant>/, and the invitation link's pages under
/invitations/ (the invitee is not a member yet).

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
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View

from portal.web.pages import TenantPageView
from tenants import selectors, services
from tenants.forms import (
    ApiTokenCreateForm,
    InvitationForm,
    InvitationNewAccountForm,
    MemberEndDateForm,
    MemberEndForm,
    MemberRoleForm,
    TrustedNetworkForm,
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
    add_form: InvitationForm | None = None,
    failed: tuple[UUID, list[str]] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The members page; `failed` is the member whose form was refused, with the reasons to show beside it."""
    memberships = selectors.membership_list(actor=request.user)
    page = Paginator(memberships, MEMBERS_PER_PAGE).get_page(request.GET.get("page"))
    can_manage = "tenants.manage_members" in view.perms
    locked = selectors.locked_out_usernames(usernames=[m.user.username.lower() for m in page]) if can_manage else set()
    rows = [
        {
            "membership": membership,
            "is_self": membership.user_id == request.user.pk,
            "is_current": membership.is_current(),
            "is_locked": membership.user.username.lower() in locked,
            "errors": failed[1] if failed is not None and failed[0] == membership.public_id else [],
        }
        for membership in page
    ]
    context = {
        "page": page,
        "rows": rows,
        "roles": Role.choices,
        "can_manage": can_manage,
        "add_form": add_form or InvitationForm(),
        "invitations": selectors.invitation_list(actor=request.user, pending_only=True)[:MEMBERS_PER_PAGE],
    }
    return view.render(request, "tenants/members.html", context, status=status)


class MembersView(TenantPageView):
    """Who has access to the tenant, in which role and until when. Tenant admins also change it here."""

    required_permission = "tenants.view_members"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return members_page(self, request)


class InvitationCreateView(TenantPageView):
    required_permission = "tenants.manage_members"

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = InvitationForm(request.POST)
        if form.is_valid():
            try:
                invitation = services.invitation_create(
                    actor=request.user, tenant=self.tenant, **form.service_arguments()
                )
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(
                    request,
                    f"An invitation to {invitation.email} as {invitation.get_role_display().lower()} is queued for "
                    f"sending. The person joins when they accept it (the link works until "
                    f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC).",
                )
                return redirect("portal:members", tenant=self.tenant.slug)
        messages.error(request, "No invitation was sent: see the reasons in the form.")
        return members_page(self, request, add_form=form, status=400)


class InvitationRevokeView(TenantPageView):
    required_permission = "tenants.manage_members"

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        invitation = selectors.invitation_get(actor=request.user, public_id=public_id)
        try:
            services.invitation_revoke(actor=request.user, invitation=invitation)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"The invitation to {invitation.email} is withdrawn: its link no longer works.")
        return redirect("portal:members", tenant=self.tenant.slug)


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
        message = (
            f"{membership.user.username}'s membership has ended: their access here and their API tokens of "
            f"{self.tenant.name} ended with it."
        )
        if not membership.user.is_active:
            message += " The account belonged to no other organisation, so it is deactivated and signed out."
        return message


class MemberUnlockForm(forms.Form):
    pass


class MemberUnlockView(MemberActionView):
    form_class = MemberUnlockForm

    def act(self, request: HttpRequest, membership: Membership, form: MemberUnlockForm) -> str:
        services.account_unlock(actor=request.user, membership=membership)
        return f"{membership.user.username} can sign in again: the lockout is lifted."


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


class TrustedNetworksView(TenantPageView):
    """The tenant's trusted networks (`tenants.manage_networks`): list, add. With none, any address may reach the
    tenant; with some, only those, on every door (pages, API, DICOMweb, DICOM listener)."""

    required_permission = "tenants.manage_networks"

    def page(self, request: HttpRequest, form: TrustedNetworkForm, *, status: int = 200) -> HttpResponse:
        context = {
            "networks": selectors.trusted_network_list(actor=request.user),
            "form": form,
            "your_address": request.META.get("REMOTE_ADDR", ""),
        }
        return self.render(request, "tenants/networks.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self.page(request, TrustedNetworkForm())

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = TrustedNetworkForm(request.POST)
        if form.is_valid():
            try:
                row = services.trusted_network_add(actor=request.user, tenant=self.tenant, **form.cleaned_data)
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(request, f"{row.network} is now a trusted network.")
                return redirect("portal:networks", tenant=self.tenant.slug)
        return self.page(request, form, status=400)


class TrustedNetworkRemoveView(TenantPageView):
    required_permission = "tenants.manage_networks"

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        row = selectors.trusted_network_get(actor=request.user, public_id=public_id)
        services.trusted_network_remove(actor=request.user, network=row)
        messages.success(request, f"{row.network} is no longer a trusted network.")
        return redirect("portal:networks", tenant=self.tenant.slug)


class ExportPolicyForm(forms.Form):
    exports_must_be_encrypted = forms.BooleanField(
        required=False, label="Identified exports must be password-encrypted bundles"
    )


class ExportPolicyView(TenantPageView):
    """/t/<tenant>/settings/exports/ : the tenant's export policy (`tenants.manage_export_policy`, a tenant
    administrator's security setting): whether an identified export must be a password-encrypted bundle."""

    required_permission = "tenants.manage_export_policy"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = ExportPolicyForm(initial={"exports_must_be_encrypted": self.tenant.exports_must_be_encrypted})
        return self.render(request, "tenants/export_policy.html", {"form": form})

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = ExportPolicyForm(request.POST)
        if not form.is_valid():
            return self.render(request, "tenants/export_policy.html", {"form": form}, status=400)
        must = form.cleaned_data["exports_must_be_encrypted"]
        services.tenant_export_policy_set(actor=request.user, tenant=self.tenant, exports_must_be_encrypted=must)
        messages.success(request, "Identified exports must now be encrypted." if must else
                         "Identified exports may now be plain bundles (the requester chooses).")  # fmt: skip
        return redirect("portal:export_policy", tenant=self.tenant.slug)


class RecertificationView(TenantPageView):
    """The access review (SECURITY.md B6): every membership of the open campaign, its role and last sign-in, to
    confirm or revoke before the deadline. Administrators (`tenants.manage_members`) only: it is who has access."""

    required_permission = "tenants.manage_members"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return recertification_page(self, request)


def recertification_page(view: TenantPageView, request: HttpRequest, *, status: int = 200) -> HttpResponse:
    campaign = services.recertification_current(actor=request.user)
    items = list(services.recertification_items(actor=request.user, campaign=campaign)) if campaign else []
    context = {
        "campaign": campaign,
        "items": items,
        "pending": sum(1 for item in items if item.decision == "pending"),
        "last_closed": services.recertification_last_closed(),
    }
    return view.render(request, "tenants/recertification.html", context, status=status)


class RecertificationDecideForm(forms.Form):
    decision = forms.ChoiceField(choices=[("confirm", "Confirm"), ("revoke", "Revoke")])


class RecertificationDecideView(TenantPageView):
    required_permission = "tenants.manage_members"

    def post(self, request: HttpRequest, tenant: str, public_id: UUID) -> HttpResponse:
        item = services.recertification_item_get(actor=request.user, public_id=public_id)
        form = RecertificationDecideForm(request.POST)
        if form.is_valid():
            try:
                item = services.recertification_decide(
                    actor=request.user, item=item, decision=form.cleaned_data["decision"]
                )
            except ValidationError as exc:
                errors_apply(form, exc)
            else:
                messages.success(request, f"{item.membership.user.username}: {item.get_decision_display().lower()}.")
                return redirect("portal:recertification", tenant=self.tenant.slug)
        messages.error(request, f"Nothing was decided for {item.membership.user.username}: "
                       f"{' '.join(_messages_of(form))}")  # fmt: skip
        return recertification_page(self, request, status=400)


# The invitation link (no tenant in the URL: the person is not a member yet)
# ------------------------------------------------------------------------------

SESSION_INVITATION = "enclave_invitation"


def _invitation_invalid(request: HttpRequest) -> HttpResponse:
    return render(request, "tenants/invitation.html", {"invalid": services.INVITATION_INVALID}, status=400)


class InvitationOpenView(View):
    """/invitations/<token>/ : the link of the e-mail. The token moves into the session and the browser goes on
    to a URL without it (as Django's password reset does), so it does not leak in a Referer or the history."""

    def get(self, request: HttpRequest, token: str) -> HttpResponse:
        invitation = selectors.invitation_by_token(raw=token)
        if invitation is None or not invitation.is_open():
            return _invitation_invalid(request)
        request.session[SESSION_INVITATION] = token
        return redirect("invitations:accept")


class InvitationAcceptView(View):
    """/invitations/accept/ : accept the invitation held in the session. Signed in with password and TOTP: one
    button. Not signed in: sign in with an existing account (and come back), or create an account."""

    def _invitation(self, request: HttpRequest) -> Any:
        invitation = selectors.invitation_by_token(raw=request.session.get(SESSION_INVITATION, ""))
        return invitation if invitation is not None and invitation.is_open() else None

    def _page(
        self, request: HttpRequest, invitation: Any, form: InvitationNewAccountForm | None = None, status: int = 200
    ) -> HttpResponse:
        user: Any = request.user
        context = {
            "invitation": invitation,
            "tenant_name": invitation.tenant.name,
            "verified": bool(user.is_authenticated and user.is_verified()),
            "signed_in": user.is_authenticated,
            "form": form or InvitationNewAccountForm(),
            "here": reverse("invitations:accept"),
        }
        return render(request, "tenants/invitation.html", context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        invitation = self._invitation(request)
        if invitation is None:
            return _invitation_invalid(request)
        return self._page(request, invitation)

    def post(self, request: HttpRequest) -> HttpResponse:
        invitation = self._invitation(request)
        if invitation is None:
            return _invitation_invalid(request)
        user: Any = request.user
        if request.POST.get("action") == "accept":
            if not (user.is_authenticated and user.is_verified()):
                return redirect(f"{reverse('accounts:login')}?next={reverse('invitations:accept')}")
            try:
                services.invitation_accept(user=user, invitation=invitation)
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
                return self._page(request, invitation, status=400)
            request.session.pop(SESSION_INVITATION, None)
            messages.success(request, f"You joined {invitation.tenant.name}.")
            return redirect("portal:tenant_home", tenant=invitation.tenant.slug)
        if user.is_authenticated:
            messages.error(request, "You are signed in: accept with this account, or sign out to create another.")
            return self._page(request, invitation, status=400)
        form = InvitationNewAccountForm(request.POST)
        if form.is_valid():
            try:
                services.invitation_accept_new_account(
                    invitation=invitation,
                    username=form.cleaned_data["username"],
                    password=form.cleaned_data["password1"],
                )
            except ValidationError as exc:
                if hasattr(exc, "error_dict"):
                    for field, errors in exc.message_dict.items():
                        form.add_error(
                            "password1" if field == "password" else field if field in form.fields else None, errors
                        )
                else:
                    form.add_error(None, exc.messages)
            else:
                request.session.pop(SESSION_INVITATION, None)
                messages.success(
                    request,
                    f"Your account is ready and you joined {invitation.tenant.name}. Sign in with your new user name "
                    "and password; you will then set up an authenticator app for two-factor sign-in.",
                )
                home = reverse("portal:tenant_home", kwargs={"tenant": invitation.tenant.slug})
                return redirect(f"{reverse('accounts:login')}?next={home}")
        return self._page(request, invitation, form=form, status=400)
