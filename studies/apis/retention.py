"""REST API of retention (issue 13) under /api/v1/t/<tenant>/retention/: policies (list, create, stop), the
deletion proposals (list, approve, reject with a reason) and legal holds (list, place, lift).

One class per operation, each calling the selectors and services the pages use (studies.selectors.retention,
studies.services.retention): the same permission (`tenants.manage_retention`: a member without it gets a 403,
recorded), the same two-person rule (the first approval is recorded, the second, by someone else, deletes), the
same audit events. A page of proposals or holds names studies and patients: it is recorded as a read
(INSTANCES_ACCESSED) before it leaves. Ids are public_id strings: a malformed one, or another tenant's, is the
same 404 as a missing one. A hold names its study or patient in the body (never in a URL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from portal.web.pagination import PAGE_PARAMETERS, page_of, paginated
from studies.models import LegalHold, RetentionProposal, Study
from studies.selectors import retention as selectors
from studies.services import retention as services
from studies.services.page_reads import study_pages_read_record

PUBLIC_ID = OpenApiParameter("public_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The object's id.")
TAGS = ["retention"]


def _user(user: Any) -> str | None:
    return user.username if user is not None else None


def _shown_record(request: Request, kind: str) -> Callable[[list[RetentionProposal | LegalHold]], None]:
    """What records a page of proposals or holds before it leaves: each names its study (Study Instance UID) or
    its patient, a read of patient data (INSTANCES_ACCESSED, as the retention pages record it). If the event
    cannot be written, nothing of the page is answered."""

    def record(rows: list[RetentionProposal | LegalHold]) -> None:
        study_pages_read_record(
            actor=request.user,
            studies=[row.study for row in rows if row.study is not None],
            patients=[row.patient for row in rows if isinstance(row, LegalHold) and row.patient is not None],
            kind=kind,
            resource=request.path,
            source_address=request.META.get("REMOTE_ADDR"),
        )

    return record


# Policies
# ------------------------------------------------------------------------------


class PolicyOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    name = serializers.CharField()
    modality = serializers.CharField(help_text="Blank: every study.")
    years_after_last_study = serializers.IntegerField()
    keep_until_patient_age = serializers.IntegerField(allow_null=True)
    active = serializers.BooleanField()
    created_by = serializers.CharField(source="created_by.username")
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "RetentionPolicy"


class PolicyListApi(TenantApi):
    OutputSerializer = PolicyOutputSerializer

    @extend_schema(
        operation_id="retention_policy_list",
        tags=TAGS,
        summary="The tenant's retention policies (tenants.manage_retention)",
        description="Active first. When several active policies match a study, the longest keep wins.",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(PolicyOutputSerializer, "RetentionPolicyPage"), **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        rows = selectors.retention_policy_list(actor=request.user)
        return paginated(self, request, rows, self.OutputSerializer)


class PolicyCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        modality = serializers.CharField(max_length=16, required=False, default="", allow_blank=True)
        years_after_last_study = serializers.IntegerField(min_value=1, max_value=200)
        keep_until_patient_age = serializers.IntegerField(min_value=1, max_value=150, required=False, allow_null=True)

        class Meta:
            ref_name = "RetentionPolicyCreate"

    OutputSerializer = PolicyOutputSerializer

    @extend_schema(
        operation_id="retention_policy_create",
        tags=TAGS,
        summary="Add a retention policy (tenants.manage_retention)",
        description="Keep a study `years_after_last_study` after the patient's most recent study (of `modality`, "
        "or every study when blank), and never before the patient reaches `keep_until_patient_age`. Recorded as "
        "RETENTION_POLICY_SET.",
        request=InputSerializer,
        responses={201: PolicyOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        policy = services.retention_policy_create(
            actor=request.user,
            name=values["name"],
            modality=values["modality"],
            years_after_last_study=values["years_after_last_study"],
            keep_until_patient_age=values.get("keep_until_patient_age"),
        )
        return Response(self.OutputSerializer(policy).data, status=status.HTTP_201_CREATED)


class PolicyStopApi(TenantApi):
    OutputSerializer = PolicyOutputSerializer

    @extend_schema(
        operation_id="retention_policy_stop",
        tags=TAGS,
        summary="Stop a retention policy (tenants.manage_retention)",
        description="Its open proposals are cancelled. Idempotent. Recorded as RETENTION_POLICY_SET.",
        parameters=[PUBLIC_ID],
        request=None,
        responses={200: PolicyOutputSerializer, **problem_responses(401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        policy = selectors.retention_policy_get(actor=request.user, public_id=public_id)
        policy = services.retention_policy_deactivate(actor=request.user, policy=policy)
        return Response(self.OutputSerializer(policy).data)


# Proposals
# ------------------------------------------------------------------------------


class ProposalOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    study_instance_uid = serializers.CharField()
    policy = serializers.UUIDField(source="policy.public_id")
    due_on = serializers.DateField(help_text="The day the study's keep ended.")
    status = serializers.ChoiceField(choices=RetentionProposal.Status.choices)
    first_approved_by = serializers.SerializerMethodField()
    first_approved_at = serializers.DateTimeField(allow_null=True)
    decided_by = serializers.SerializerMethodField()
    decided_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField()

    class Meta:
        ref_name = "RetentionProposal"

    def get_first_approved_by(self, proposal: RetentionProposal) -> str | None:
        return _user(proposal.first_approved_by)

    def get_decided_by(self, proposal: RetentionProposal) -> str | None:
        return _user(proposal.decided_by)


class ProposalListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        decided = serializers.BooleanField(
            required=False, default=False, help_text="true: the decided ones (newest first) instead of the queue."
        )

    OutputSerializer = ProposalOutputSerializer

    @extend_schema(
        operation_id="retention_proposal_list",
        tags=TAGS,
        summary="The deletion queue (tenants.manage_retention)",
        description="The open proposals, oldest due first; with `decided=true` the decided ones.",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={
            200: page_of(ProposalOutputSerializer, "RetentionProposalPage"),
            **problem_responses(400, 401, 403, 404),
        },
    )
    def get(self, request: Request, tenant: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = selectors.retention_proposal_list(actor=request.user, open_only=not filters.validated_data["decided"])
        return paginated(self, request, rows, self.OutputSerializer, shown=_shown_record(request, "retention queue"))


class ProposalApproveApi(TenantApi):
    OutputSerializer = ProposalOutputSerializer

    @extend_schema(
        operation_id="retention_proposal_approve",
        tags=TAGS,
        summary="Approve a deletion (tenants.manage_retention; two different people)",
        description="The first approval is recorded (RETENTION_APPROVED) and the study stays; the second, by "
        "someone else, deletes the study, its blobs and its keys, leaves a tombstone and is recorded as "
        "STUDY_DELETED. The same person approving twice, a legal hold, or a study no longer past its keep: a 400 "
        "that says why.",
        parameters=[PUBLIC_ID],
        request=None,
        responses={200: ProposalOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        proposal = selectors.retention_proposal_get(actor=request.user, public_id=public_id)
        proposal = services.retention_proposal_approve(actor=request.user, proposal=proposal)
        return Response(self.OutputSerializer(proposal).data)


class ProposalRejectApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=services.REASON_MAX, allow_blank=True, help_text="Required.")

        class Meta:
            ref_name = "RetentionProposalReject"

    OutputSerializer = ProposalOutputSerializer

    @extend_schema(
        operation_id="retention_proposal_reject",
        tags=TAGS,
        summary="Reject a deletion, with a reason (tenants.manage_retention)",
        description="The study stays. Recorded as RETENTION_REJECTED.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: ProposalOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        proposal = selectors.retention_proposal_get(actor=request.user, public_id=public_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        proposal = services.retention_proposal_reject(
            actor=request.user, proposal=proposal, reason=data.validated_data["reason"]
        )
        return Response(self.OutputSerializer(proposal).data)


# Legal holds
# ------------------------------------------------------------------------------


class HoldOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    study_instance_uid = serializers.CharField(help_text="Set for a hold on one study.")
    patient = serializers.UUIDField(source="patient.public_id", allow_null=True, default=None)
    reason = serializers.CharField()
    placed_by = serializers.CharField(source="placed_by.username")
    placed_at = serializers.DateTimeField(source="created_at")
    lifted_at = serializers.DateTimeField(allow_null=True)
    lifted_by = serializers.SerializerMethodField()
    lift_reason = serializers.CharField()

    class Meta:
        ref_name = "LegalHold"

    def get_lifted_by(self, hold: LegalHold) -> str | None:
        return _user(hold.lifted_by)


class HoldListApi(TenantApi):
    OutputSerializer = HoldOutputSerializer

    @extend_schema(
        operation_id="legal_hold_list",
        tags=TAGS,
        summary="The legal holds (tenants.manage_retention)",
        description="Holds in force first, newest first.",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(HoldOutputSerializer, "LegalHoldPage"), **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        rows = selectors.legal_hold_list(actor=request.user)
        return paginated(self, request, rows, self.OutputSerializer, shown=_shown_record(request, "legal holds"))


class HoldPlaceApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        study_instance_uid = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
        patient_id = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
        reason = serializers.CharField(max_length=services.REASON_MAX, allow_blank=True, help_text="Required.")

        class Meta:
            ref_name = "LegalHoldPlace"

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if bool(attrs["study_instance_uid"].strip()) == bool(attrs["patient_id"].strip()):
                raise serializers.ValidationError("Name either a study (study_instance_uid) or a patient (patient_id).")
            return attrs

    OutputSerializer = HoldOutputSerializer

    @extend_schema(
        operation_id="legal_hold_place",
        tags=TAGS,
        summary="Place a legal hold on a study or a patient (tenants.manage_retention)",
        description="While it is not lifted nothing it covers is proposed or deleted; the open proposals it covers "
        "are cancelled. Recorded as LEGAL_HOLD_PLACED. No such study or patient in this tenant: a 404.",
        request=InputSerializer,
        responses={201: HoldOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        target = selectors.legal_hold_target_find(
            actor=request.user, study_instance_uid=values["study_instance_uid"], patient_id=values["patient_id"]
        )
        if isinstance(target, Study):
            hold = services.legal_hold_place(actor=request.user, study=target, reason=values["reason"])
        else:
            hold = services.legal_hold_place(actor=request.user, patient=target, reason=values["reason"])
        return Response(self.OutputSerializer(hold).data, status=status.HTTP_201_CREATED)


class HoldLiftApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=services.REASON_MAX, allow_blank=True, help_text="Required.")

        class Meta:
            ref_name = "LegalHoldLift"

    OutputSerializer = HoldOutputSerializer

    @extend_schema(
        operation_id="legal_hold_lift",
        tags=TAGS,
        summary="Lift a legal hold, with a reason (tenants.manage_retention)",
        description="Idempotent. Recorded as LEGAL_HOLD_LIFTED.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: HoldOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        hold = selectors.legal_hold_get(actor=request.user, public_id=public_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        hold = services.legal_hold_lift(actor=request.user, hold=hold, reason=data.validated_data["reason"])
        return Response(self.OutputSerializer(hold).data)
