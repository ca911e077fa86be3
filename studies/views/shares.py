"""The share page under /t/<tenant>/: `studies/<public_id>/access/` shows the study's shares, shares it with a
member or an outside referring physician, and revokes (members with `tenants.share_studies` who see the study).

Study identifiers in our URLs are public_id UUIDs only, never patient data.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone

from portal.web.pages import TenantPageView
from studies import services
from studies.models import Study
from studies.selectors import (
    share_get,
    share_grantee_candidates,
    share_invitation_pending_get,
    share_invitation_pending_list,
    share_list,
    study_get,
)
from studies.services.page_reads import study_pages_read_record
from studies.views.common import form_errors_into, person_name, require_image_access
from tenants import access


class ShareMemberForm(forms.Form):
    grantee = forms.ChoiceField(label="Member")
    days = forms.IntegerField(label="Days", min_value=1, initial=settings.SHARE_DEFAULT_DAYS)
    note = forms.CharField(label="Note (optional)", max_length=300, required=False)

    def __init__(self, *args: Any, candidates: list[Any], offered: list[Any] | None = None, **kwargs: Any) -> None:
        """`candidates` are accepted (every current member: the service refuses a role that sees no images with
        its reason); `offered` are listed (those whose role sees images)."""
        super().__init__(*args, **kwargs)
        field = cast(forms.ChoiceField, self.fields["grantee"])
        field.choices = [(u.username, f"{u.get_full_name() or u.username} ({u.username})") for u in candidates]
        if offered is not None:
            names = {u.username for u in offered}
            field.widget.choices = [choice for choice in field.choices if choice[0] in names]
        cast(forms.IntegerField, self.fields["days"]).max_value = settings.SHARE_MAX_DAYS
        self.fields["days"].widget.attrs["max"] = settings.SHARE_MAX_DAYS


class ShareOutsideForm(forms.Form):
    email = forms.EmailField(label="Email")
    first_name = forms.CharField(label="First name", max_length=150)
    last_name = forms.CharField(label="Last name", max_length=150)
    days = forms.IntegerField(label="Days", min_value=1, initial=settings.SHARE_DEFAULT_DAYS)
    note = forms.CharField(label="Note (optional)", max_length=300, required=False)


class StudyAccessView(TenantPageView):
    """/t/<tenant>/studies/<public_id>/access/ : the study's shares and the forms to share it (POST with
    `action` = member or outside). A study the member cannot see is a 404; without `tenants.share_studies`, 403.
    The page names the patient: each showing of it is recorded first (`study_pages_read_record`)."""

    def _study(self, request: HttpRequest, public_id: uuid.UUID) -> Study:
        require_image_access(self)
        study = study_get(actor=request.user, public_id=public_id)
        share_list(actor=request.user, study=study)  # the permission check, before anything is shown
        return study

    def _offered(self, candidates: list[Any]) -> list[Any]:
        """The members a study may be shared with: those whose role sees images (tenants.access decides)."""
        return [user for user in candidates if access.may_see_images(user, self.tenant)]

    def _page(self, request: HttpRequest, study: Study, *, member_form: Any = None, outside_form: Any = None,
              status: int = 200) -> HttpResponse:  # fmt: skip
        candidates = list(share_grantee_candidates(actor=request.user))
        now = timezone.now()
        shares = [
            {"share": s, "in_force": s.revoked_at is None and s.expires_at > now}
            for s in share_list(actor=request.user, study=study)
        ]
        invited = list(share_invitation_pending_list(actor=request.user, study=study))
        study_pages_read_record(
            actor=request.user,
            studies=[study],
            kind="share page",
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
        context = {
            "study": study,
            "patient_name": person_name(study.patient.name),
            "shares": shares,
            "invited": invited,
            "member_form": member_form or ShareMemberForm(candidates=candidates, offered=self._offered(candidates)),
            "outside_form": outside_form or ShareOutsideForm(),
            "max_days": settings.SHARE_MAX_DAYS,
        }
        return self.render(request, "studies/share.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        return self._page(request, self._study(request, public_id))

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        study = self._study(request, public_id)
        if request.POST.get("action") == "outside":
            return self._share_outside(request, study)
        return self._share_member(request, study)

    def _share_member(self, request: HttpRequest, study: Study) -> HttpResponse:
        candidates = list(share_grantee_candidates(actor=request.user))
        form = ShareMemberForm(request.POST, candidates=candidates, offered=self._offered(candidates))
        if form.is_valid():
            grantee = next(u for u in candidates if u.username == form.cleaned_data["grantee"])
            try:
                services.share_create(
                    actor=request.user,
                    study=study,
                    grantee=grantee,
                    expires_at=timezone.now() + timedelta(days=form.cleaned_data["days"]),
                    note=form.cleaned_data["note"],
                )
            except ValidationError as exc:
                form_errors_into(form, exc)
            else:
                messages.success(request, f"Shared with {grantee.username} for {form.cleaned_data['days']} days.")
                return redirect("portal:study_access", tenant=self.tenant.slug, public_id=study.public_id)
        return self._page(request, study, member_form=form, status=400)

    def _share_outside(self, request: HttpRequest, study: Study) -> HttpResponse:
        form = ShareOutsideForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                services.share_invite_outside(
                    actor=request.user, study=study, email=data["email"], first_name=data["first_name"],
                    last_name=data["last_name"], days=data["days"], note=data["note"],
                )  # fmt: skip
            except ValidationError as exc:
                form_errors_into(form, exc)
            else:
                # The same answer whether or not an account has this address: nothing was looked up by it.
                messages.success(request, services.OUTSIDE_INVITED.format(email=data["email"], days=data["days"]))
                return redirect("portal:study_access", tenant=self.tenant.slug, public_id=study.public_id)
        return self._page(request, study, outside_form=form, status=400)


class ShareRevokeView(TenantPageView):
    """POST /t/<tenant>/studies/<public_id>/access/shares/<share_id>/revoke/ : revoke a share now."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID, share_id: uuid.UUID) -> HttpResponse:
        require_image_access(self)
        study = study_get(actor=request.user, public_id=public_id)
        share = share_get(actor=request.user, study=study, public_id=share_id)
        services.share_revoke(actor=request.user, share=share)
        messages.success(request, f"The share with {share.grantee.username} is revoked.")
        return redirect("portal:study_access", tenant=self.tenant.slug, public_id=study.public_id)


class ShareInvitationWithdrawView(TenantPageView):
    """POST /t/<tenant>/studies/<public_id>/access/invitations/<invitation_id>/withdraw/ : withdraw a share
    offered to an outside physician before they accept it."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID, invitation_id: uuid.UUID) -> HttpResponse:
        require_image_access(self)
        study = study_get(actor=request.user, public_id=public_id)
        pending = share_invitation_pending_get(actor=request.user, study=study, public_id=invitation_id)
        services.share_invitation_withdraw(actor=request.user, pending=pending)
        messages.success(request, f"The invitation to {pending.invitation.email} is withdrawn: nothing is shared.")
        return redirect("portal:study_access", tenant=self.tenant.slug, public_id=study.public_id)
