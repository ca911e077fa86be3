"""Emergency access (break-glass) pages under /t/<tenant>/:

- `break-glass/`: a clinician's emergency access: the accession number or Study Instance UID is typed into a
  POST form (never in a URL), with a reason and a fresh TOTP code; their grants, and ending one early;
- `break-glass/review/`: the compliance officers' review queue and sign-off.

Identifiers in our URLs are public_id UUIDs only, never patient data.
"""

from __future__ import annotations

import uuid

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone

from portal.web.pages import TenantPageView
from studies import services
from studies.models import BreakGlassGrant, Study
from studies.selectors import (
    break_glass_grant_get_for_user,
    break_glass_grant_list_for_user,
    break_glass_review_get,
    break_glass_review_list,
    study_get,
)
from studies.services.page_reads import study_pages_read_record
from studies.views.common import form_errors_into, person_name
from tenants import access


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


class BreakGlassView(TenantPageView):
    """/t/<tenant>/break-glass/ : start emergency access (POST), see one's grants and their studies."""

    def _page(self, request: HttpRequest, form: BreakGlassForm, status: int = 200) -> HttpResponse:
        now = timezone.now()
        rows = []
        shown: list[Study] = []
        for grant in break_glass_grant_list_for_user(actor=request.user)[:20]:
            active = grant.ended_at is None and grant.expires_at > now
            study = None
            if active:
                try:  # shown only through the permission decision, so an expired grant shows nothing
                    study = study_get(actor=request.user, public_id=grant.study.public_id)
                    shown.append(study)
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
        study_pages_read_record(
            actor=request.user,
            studies=shown,
            kind="break-glass page",
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
        context = {"form": form, "rows": rows, "hours": settings.BREAK_GLASS_HOURS}
        return self.render(request, "studies/break_glass.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        access.break_glass_require(request.user)
        return self._page(request, BreakGlassForm())

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        access.break_glass_require(request.user)
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
                form_errors_into(form, exc)
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
        grants = list(break_glass_review_list(actor=request.user))
        pending = [
            {
                "grant": g,
                "active": g.ended_at is None and g.expires_at > now,
                "form": (errors or {}).get(g.pk) or ReviewForm(auto_id=f"id_{g.public_id}_%s"),
            }
            for g in grants
        ]
        done = list(break_glass_review_list(actor=request.user, pending=False)[:20])
        study_pages_read_record(
            actor=request.user,
            studies=[grant.study for grant in grants],  # the reviewed list below names no patient
            kind="review queue",
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
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
                form_errors_into(form, exc)
            else:
                messages.success(request, f"Signed off the emergency access by {grant.user.username}.")
                return redirect("portal:break_glass_review", tenant=self.tenant.slug)
        return self._page(request, errors={grant.pk: form}, status=400)
