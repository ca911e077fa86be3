"""REST API of shares under /api/v1/t/<tenant>/: one class per operation, each calling one selector or service.
Ids are public_id strings: a malformed one is the same 404 as a missing one."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from studies import services
from studies.models import ShareInvitation, StudyShare
from studies.selectors import share_get, share_grantee_candidates, share_invitation_pending_get, study_get


class ShareOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    grantee = serializers.CharField(source="grantee.username")
    granted_by = serializers.CharField(source="granted_by.username")
    note = serializers.CharField()
    expires_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "StudyShare"


class ShareCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        grantee = serializers.CharField(help_text="User name of a current member of this tenant.")
        days = serializers.IntegerField(min_value=1, max_value=settings.SHARE_MAX_DAYS)
        note = serializers.CharField(max_length=300, required=False, default="", allow_blank=True)

        class Meta:
            ref_name = "StudyShareCreate"

    @extend_schema(
        operation_id="study_share_create",
        tags=["shares"],
        summary="Share a study with a member for some days",
        description="Needs `tenants.share_studies` and a study you can see. Recorded as STUDY_SHARED.",
        request=InputSerializer,
        responses={201: ShareOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        study = study_get(actor=request.user, public_id=public_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        wanted = data.validated_data["grantee"].strip().lower()
        grantee = next((u for u in share_grantee_candidates(actor=request.user) if u.username.lower() == wanted), None)
        if grantee is None:
            raise serializers.ValidationError({"grantee": ["No current member has this user name."]})
        share = services.share_create(
            actor=request.user,
            study=study,
            grantee=grantee,
            expires_at=timezone.now() + timedelta(days=data.validated_data["days"]),
            note=data.validated_data["note"],
        )
        return Response(ShareOutputSerializer(share).data, status=status.HTTP_201_CREATED)


class ShareInvitationCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField(help_text="Where the invitation is sent.")
        first_name = serializers.CharField(max_length=150)
        last_name = serializers.CharField(max_length=150)
        days = serializers.IntegerField(min_value=1, max_value=settings.SHARE_MAX_DAYS)
        note = serializers.CharField(max_length=300, required=False, default="", allow_blank=True)

        class Meta:
            ref_name = "StudyShareInvitationCreate"

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField(source="public_id")
        email = serializers.EmailField(source="invitation.email")
        status = serializers.CharField(source="invitation.status")
        share_expires_at = serializers.DateTimeField(source="expires_at")
        invitation_expires_at = serializers.DateTimeField(source="invitation.expires_at")
        detail = serializers.SerializerMethodField()

        class Meta:
            ref_name = "StudyShareInvitation"

        def get_detail(self, obj: ShareInvitation) -> str:
            return services.OUTSIDE_INVITED.format(email=obj.invitation.email, days=self.context["days"])

    @extend_schema(
        operation_id="study_share_invitation_create",
        tags=["shares"],
        summary="Share a study with an outside physician, by invitation",
        description=(
            "Needs `tenants.share_studies` and a study you can see. An invitation is e-mailed; nothing is shared, "
            "and nobody joins this tenant, until the person accepts it signed in with two-factor sign-in. The "
            "answer is the same whether or not an account has this address. Recorded as INVITATION_SENT; the "
            "share, once accepted, as STUDY_SHARED."
        ),
        request=InputSerializer,
        responses={202: OutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        study = study_get(actor=request.user, public_id=public_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pending = services.share_invite_outside(actor=request.user, study=study, **data.validated_data)
        output = self.OutputSerializer(pending, context={"days": data.validated_data["days"]})
        return Response(output.data, status=status.HTTP_202_ACCEPTED)


class ShareInvitationWithdrawApi(TenantApi):
    @extend_schema(
        operation_id="study_share_invitation_withdraw",
        tags=["shares"],
        summary="Withdraw a share offered to an outside physician before they accept it",
        description="Its link stops working and nothing is shared. Recorded as INVITATION_REVOKED.",
        request=None,
        responses={204: None, **problem_responses(401, 403, 404)},
    )
    def delete(self, request: Request, tenant: str, public_id: str, invitation_id: str) -> Response:
        study = study_get(actor=request.user, public_id=public_id)
        pending = share_invitation_pending_get(actor=request.user, study=study, public_id=invitation_id)
        services.share_invitation_withdraw(actor=request.user, pending=pending)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ShareRevokeApi(TenantApi):
    @extend_schema(
        operation_id="study_share_revoke",
        tags=["shares"],
        summary="Revoke a share now",
        description="Idempotent. Recorded as SHARE_REVOKED.",
        request=None,
        responses={204: None, **problem_responses(401, 403, 404)},
    )
    def delete(self, request: Request, tenant: str, public_id: str, share_id: str) -> Response:
        study = study_get(actor=request.user, public_id=public_id)
        share: StudyShare = share_get(actor=request.user, study=study, public_id=share_id)
        services.share_revoke(actor=request.user, share=share)
        return Response(status=status.HTTP_204_NO_CONTENT)
