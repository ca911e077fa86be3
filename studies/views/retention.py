"""Retention pages under /t/<tenant>/retention/ (issue 13), for people with `tenants.manage_retention` (tenant
administrators and compliance officers):

- `retention/`: the policies (add, stop) and the tombstones of deleted studies;
- `retention/proposals/`: the deletion queue; approve (two different people) or reject with a reason;
- `retention/holds/`: legal holds (each names its study or patient: a recorded read); place one on a study
  (Study Instance UID) or a patient (Patient ID), typed into a POST form, never a URL; lift one with a reason.
"""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from portal.web.pages import TenantPageView
from studies.models import Study
from studies.selectors import retention as selectors
from studies.services import retention as services
from studies.services.page_reads import study_pages_read_record
from studies.views.common import form_errors_into
from tenants import access

MANAGE_RETENTION = "tenants.manage_retention"


class PolicyForm(forms.Form):
    name = forms.CharField(max_length=100)
    modality = forms.CharField(max_length=16, required=False, help_text="Blank: every study")
    years_after_last_study = forms.IntegerField(min_value=0, max_value=200)
    keep_until_patient_age = forms.IntegerField(min_value=0, max_value=150, required=False)


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class HoldForm(forms.Form):
    study_instance_uid = forms.CharField(label="Study Instance UID", max_length=64, required=False)
    patient_id = forms.CharField(label="Patient ID", max_length=64, required=False)
    reason = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def clean(self) -> dict:
        data = super().clean() or {}
        if bool(data.get("study_instance_uid")) == bool(data.get("patient_id")):
            raise ValidationError("Give either a Study Instance UID or a Patient ID.")
        return data


class RetentionPoliciesView(TenantPageView):
    """/t/<tenant>/retention/ : the policies and the tombstones."""

    required_permission = MANAGE_RETENTION

    def _page(self, request: HttpRequest, form: PolicyForm, status: int = 200) -> HttpResponse:
        context = {
            "form": form,
            "policies": selectors.retention_policy_list(actor=request.user),
            "tombstones": selectors.retention_tombstone_list(actor=request.user)[:50],
        }
        return self.render(request, "studies/retention.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self._page(request, PolicyForm())

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = PolicyForm(request.POST)
        if form.is_valid():
            try:
                services.retention_policy_create(actor=request.user, **form.cleaned_data)
            except ValidationError as exc:
                form_errors_into(form, exc)
            else:
                messages.success(request, "Policy added. The daily job applies it from its next run.")
                return redirect("portal:retention", tenant=self.tenant.slug)
        return self._page(request, form, status=400)


class RetentionPolicyStopView(TenantPageView):
    """POST /t/<tenant>/retention/policies/<public_id>/stop/ : stop a policy (its open proposals are cancelled)."""

    required_permission = MANAGE_RETENTION
    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        policy = selectors.retention_policy_get(actor=request.user, public_id=public_id)
        services.retention_policy_deactivate(actor=request.user, policy=policy)
        messages.success(request, "Policy stopped.")
        return redirect("portal:retention", tenant=self.tenant.slug)


class RetentionProposalsView(TenantPageView):
    """/t/<tenant>/retention/proposals/ : the deletion queue and the recent decisions."""

    required_permission = MANAGE_RETENTION

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return _queue_page(self, request)


def _queue_page(
    view: TenantPageView, request: HttpRequest, errors: dict[uuid.UUID, ReasonForm] | None = None
) -> HttpResponse:
    errors = errors or {}
    pending = list(selectors.retention_proposal_list(actor=request.user)[:100])
    studies: list[Study] = [p.study for p in pending if p.study is not None]
    # The queue shows study UIDs, dates and modalities: a read of patient data, recorded before it leaves.
    study_pages_read_record(
        actor=request.user,
        studies=studies,
        kind="retention queue",
        resource=request.path,
        source_address=request.META.get("REMOTE_ADDR"),
    )
    rows = [{"proposal": p, "form": errors.get(p.public_id) or ReasonForm()} for p in pending]
    context = {"rows": rows, "done": selectors.retention_proposal_list(actor=request.user, open_only=False)[:50]}
    return view.render(request, "studies/retention_proposals.html", context, status=400 if errors else 200)


class RetentionProposalDecideView(TenantPageView):
    """POST /t/<tenant>/retention/proposals/<public_id>/ : `decision` approve or reject (with a reason)."""

    required_permission = MANAGE_RETENTION
    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        proposal = selectors.retention_proposal_get(actor=request.user, public_id=public_id)
        form = ReasonForm(request.POST)
        decision = request.POST.get("decision", "")
        try:
            if not form.is_valid():
                raise ValidationError("The reason is too long.")
            if decision == "approve":
                proposal = services.retention_proposal_approve(actor=request.user, proposal=proposal)
                if proposal.status == proposal.Status.DELETED:
                    messages.success(request, "Approved by a second person: the study is deleted.")
                else:
                    messages.success(request, "Approved. A second person must approve before anything is deleted.")
            elif decision == "reject":
                services.retention_proposal_reject(
                    actor=request.user, proposal=proposal, reason=form.cleaned_data["reason"]
                )
                messages.success(request, "Rejected. The study is kept.")
            else:
                raise ValidationError("Choose approve or reject.")
        except ValidationError as exc:
            form_errors_into(form, exc)
            return _queue_page(self, request, {proposal.public_id: form})
        return redirect("portal:retention_proposals", tenant=self.tenant.slug)


class LegalHoldsView(TenantPageView):
    """/t/<tenant>/retention/holds/ : the holds; place one."""

    required_permission = MANAGE_RETENTION

    def _page(self, request: HttpRequest, form: HoldForm, status: int = 200) -> HttpResponse:
        holds = list(selectors.legal_hold_list(actor=request.user)[:200])
        # Each hold names its patient (Patient ID) or its study (UID): a read of patient data, recorded before it
        # leaves.
        study_pages_read_record(
            actor=request.user,
            studies=[hold.study for hold in holds if hold.study is not None],
            patients=[hold.patient for hold in holds if hold.patient is not None],
            kind="legal holds",
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )
        context = {"form": form, "holds": holds}
        return self.render(request, "studies/retention_holds.html", context, status=status)

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        return self._page(request, HoldForm())

    def post(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = HoldForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                target = selectors.legal_hold_target_find(
                    actor=request.user, study_instance_uid=data["study_instance_uid"], patient_id=data["patient_id"]
                )
                if isinstance(target, Study):
                    services.legal_hold_place(actor=request.user, study=target, reason=data["reason"])
                else:
                    services.legal_hold_place(actor=request.user, patient=target, reason=data["reason"])
            except access.NotVisible:
                form.add_error(None, "No such study or patient in this tenant.")
            except ValidationError as exc:
                form_errors_into(form, exc)
            else:
                messages.success(request, "Hold placed. Nothing it covers will be proposed or deleted.")
                return redirect("portal:retention_holds", tenant=self.tenant.slug)
        return self._page(request, form, status=400)


class LegalHoldLiftView(TenantPageView):
    """POST /t/<tenant>/retention/holds/<public_id>/lift/ : lift a hold, with a reason."""

    required_permission = MANAGE_RETENTION
    http_method_names = ["post"]

    def post(self, request: HttpRequest, tenant: str, public_id: uuid.UUID) -> HttpResponse:
        hold = selectors.legal_hold_get(actor=request.user, public_id=public_id)
        form = ReasonForm(request.POST)
        try:
            if not form.is_valid():
                raise ValidationError("The reason is too long.")
            services.legal_hold_lift(actor=request.user, hold=hold, reason=form.cleaned_data["reason"])
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("portal:retention_holds", tenant=self.tenant.slug)
        messages.success(request, "Hold lifted.")
        return redirect("portal:retention_holds", tenant=self.tenant.slug)
