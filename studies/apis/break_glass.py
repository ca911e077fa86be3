"""REST API of emergency access (break-glass) under /api/v1/t/<tenant>/: one class per operation, each calling
one service."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from studies import services
from studies.models import BreakGlassGrant


class BreakGlassStartApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        study = serializers.CharField(max_length=64, help_text="Accession number or Study Instance UID.")
        reason = serializers.CharField(max_length=500, allow_blank=True, help_text="Required: why, now.")
        otp_token = serializers.CharField(max_length=12, help_text="A fresh code from your authenticator app.")

        class Meta:
            ref_name = "BreakGlassStart"

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField(source="public_id")
        study = serializers.UUIDField(source="study.public_id")
        purpose_of_use = serializers.CharField()
        expires_at = serializers.DateTimeField()

        class Meta:
            ref_name = "BreakGlassGrant"

    @extend_schema(
        operation_id="break_glass_start",
        tags=["break-glass"],
        summary="Start emergency access to a study",
        description="Clinicians only, for a study they cannot see. Alerts the compliance officers; recorded as "
        "Security Alert 110113 / Emergency Override Started 110127.",
        request=InputSerializer,
        responses={201: OutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values: dict[str, Any] = data.validated_data
        grant: BreakGlassGrant = services.break_glass_start(
            actor=request.user, identifier=values["study"], reason=values["reason"], otp_token=values["otp_token"]
        )
        return Response(self.OutputSerializer(grant).data, status=status.HTTP_201_CREATED)
