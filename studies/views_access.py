"""Pages about who else may open a study, under /t/<tenant>/:

- `studies/<public_id>/access/`: the study's shares, sharing with a member or an outside referring physician,
  revoking (members with `tenants.share_studies` who see the study);
- `break-glass/`: a clinician's emergency access: the accession number or Study Instance UID is typed into a
  POST form (never in a URL), with a reason and a fresh TOTP code; their grants, and ending one early;
- `break-glass/review/`: the compliance officers' review queue and sign-off.

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

from portal.views import TenantPageView
from studies import services
from studies.models import BreakGlassGrant, Study
from studies.selectors import (
    CLINICIAN_ROLES,
    break_glass_grant_get_for_user,
    break_glass_grant_list_for_user,
    break_glass_review_get,
    break_glass_review_list,
    share_get,
    share_grantee_candidates,
    share_list,
    study_get,
)
from studies.views import person_name
from tenants import access


def _errors_into(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's refusal on the form: on its field when the form has one, else above the form."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc.messages)
        return
    for field, errors in exc.message_dict.items():
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


# Shares
# ------------------------------------------------------------------------------


class ShareMemberForm(forms.Form):
    grantee = forms.ChoiceField(label="Member")
    days = forms.IntegerField(label="Days", min_value=1, initial=settings.SHARE_DEFAULT_DAYS)
    note = forms.CharField(label="Note (optional)", max_length=300, required=False)

    def __init__(self, *args: Any, candidates: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["grantee"]).choices = [
            (u.username, f"{u.get_full_name() or u.username} ({u.username})") for u in candidates
        ]
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
    `action` = member or outside). A study the member cannot see is a 404; without `tenants.share_studies`, 403."""

    def _study(self, request: HttpRequest, public_id: uuid.UUID) -> Study:
        study = study_get(actor=request.user, public_id=public_id)
        share_list(actor=request.user, study=study)  # the permission check, before anything is shown
        return study

    def _page(self, request: HttpRequest, study: Study, *, member_form: Any = None, outside_form: Any = None,
              status: int = 200) -> HttpResponse:  # fmt: skip
        candidates = list(share_grantee_candidates(actor=request.user))
        now = timezone.now()
        shares = [
            {"share": s, "in_force": s.revoked_at is None and s.expires_at > now}
            for s in share_list(actor=request.user, study=study)
        ]
        context = {
            "study": study,
            "patient_name": person_name(study.patient.name),
            "shares": shares,
            "member_form": member_form or ShareMemberForm(candidates=candidates),
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
        form = ShareMemberForm(request.POST, candidates=candidates)
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
                _errors_into(form, exc)
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
                _errors_into(form, exc)
            else:
                messages.success(request, f"Invited {data['email']} and shared the study for {data['days']} days.")
                return redirect("portal:study_access", tenant=self.tenant.slug, public_id=study.public_id)
        return self._page(request, study, outside_form=form, status=400)


class ShareRevokeView(TenantPageView):
    """POST /t/<tenant>/studies/<public_id>/access/shares/<share_id>/revoke/ : revoke a share now."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID, share_id: uuid.UUID) -> HttpResponse:
        study = study_get(actor=request.user, public_id=public_id)
        share = share_get(actor=request.user, study=study, public_id=share_id)
        services.share_revoke(actor=request.user, share=share)
        messages.success(request, f"The share with {share.grantee.username} is revoked.")
        return redirect("portal:study_access", tenant=self.tenant.slug, public_id=study.public_id)


# Break-glass
# ------------------------------------------------------------------------------


class BreakGlassForm(forms.Form):
    identifier = forms.CharField(
        label="Accession number or Study Instance UID",
        max_length=64,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    reason = forms.CharField(
        label="Why you need this study now",
        max_length=500,
        required=False,  # the service refuses an empty reason with its own message
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    otp_token = forms.CharField(
        label="A fresh code from your authenticator app",
        max_length=12,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


def _require_clinician(view: TenantPageView) -> None:
    if view.membership.role not in CLINICIAN_ROLES:
        raise access.Forbidden("Only clinicians can use emergency access.")


class BreakGlassView(TenantPageView):
    """/t/<tenant>/break-glass/ : start emergency access (POST), see one's grants and their studies."""

    def _page(self, request: HttpRequest, form: BreakGlassForm, status: int = 200) -> HttpResponse:
        now = timezone.now()
        rows = []
        for grant in break_glass_grant_list_for_user(actor=request.user)[:20]:
            active = grant.ended_at is None and grant.expires_at > now
            study = None
            if active:
                try:  # shown only through the permission decision, so an expired grant shows nothing
                    study = study_get(actor=request.user, public_id=grant.study.public_id)
                except access.NotVisible:
                    active = False
            rows.append(
                {
                    "grant": grant,
                    "active": active,
                    "study": study,
                    "patient_name": person_name(study.patient.name) if study is not None else "",
                }
            )
        context = {"form": form, "rows": rows, "hours": settings.BREAK_GLASS_HOURS}
        return self.render(request, "studies/break_glass.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        _require_clinician(self)
        return self._page(request, BreakGlassForm())

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        _require_clinician(self)
        form = BreakGlassForm(request.POST)
        if form.is_valid():
            try:
                grant = services.break_glass_start(
                    actor=request.user,
                    identifier=form.cleaned_data["identifier"],
                    reason=form.cleaned_data["reason"],
                    otp_token=form.cleaned_data["otp_token"],
                )
            except ValidationError as exc:
                _errors_into(form, exc)
            else:
                messages.warning(
                    request,
                    f"Emergency access granted until {grant.expires_at:%H:%M} UTC. It is recorded and the "
                    "compliance officers were told.",
                )
                return redirect("portal:break_glass", tenant=self.tenant.slug)
        return self._page(request, form, status=400)


class BreakGlassEndView(TenantPageView):
    """POST /t/<tenant>/break-glass/<public_id>/end/ : end one's own emergency access now."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        grant = break_glass_grant_get_for_user(actor=request.user, public_id=public_id)
        services.break_glass_end(actor=request.user, grant=grant)
        messages.success(request, "Emergency access ended.")
        return redirect("portal:break_glass", tenant=self.tenant.slug)


class ReviewForm(forms.Form):
    verdict = forms.ChoiceField(
        choices=[
            (BreakGlassGrant.Review.APPROPRIATE, "Appropriate"),
            (BreakGlassGrant.Review.INAPPROPRIATE, "Inappropriate"),
        ],
        widget=forms.RadioSelect,
    )
    note = forms.CharField(label="Note", max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class BreakGlassReviewView(TenantPageView):
    """/t/<tenant>/break-glass/review/ : the compliance officers' queue of emergency accesses to sign off."""

    required_permission = "tenants.review_break_glass"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self._page(request)

    def _page(
        self, request: HttpRequest, errors: dict[int, ReviewForm] | None = None, status: int = 200
    ) -> HttpResponse:
        now = timezone.now()
        pending = [
            {
                "grant": g,
                "active": g.ended_at is None and g.expires_at > now,
                "form": (errors or {}).get(g.pk) or ReviewForm(auto_id=f"id_{g.public_id}_%s"),
            }
            for g in break_glass_review_list(actor=request.user)
        ]
        done = list(break_glass_review_list(actor=request.user, pending=False)[:20])
        context = {"pending": pending, "done": done}
        return self.render(request, "studies/review.html", context, status=status)


class BreakGlassSignOffView(BreakGlassReviewView):
    """POST /t/<tenant>/break-glass/review/<public_id>/ : a verdict on one emergency access."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        grant = break_glass_review_get(actor=request.user, public_id=public_id)
        form = ReviewForm(request.POST, auto_id=f"id_{grant.public_id}_%s")
        if form.is_valid():
            try:
                services.break_glass_review(
                    actor=request.user, grant=grant, verdict=form.cleaned_data["verdict"],
                    note=form.cleaned_data["note"],
                )  # fmt: skip
            except ValidationError as exc:
                _errors_into(form, exc)
            else:
                messages.success(request, f"Signed off the emergency access by {grant.user.username}.")
                return redirect("portal:break_glass_review", tenant=self.tenant.slug)
        return self._page(request, errors={grant.pk: form}, status=400)
