"""The device side of the API, under /api/v1/t/<tenant>/devices/: a member asks for a device; a device enrols with
its code, reports its attestation when it refreshes its token, learns its state and pending orders, and confirms a
wipe; studies written to portable media are recorded. Device endpoints take the device's own credential
(`Authorization: Bearer encd_...`, or `ence_...` for enrolment); anything else there is a 403."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from devices import selectors, services
from devices.apis.common import (
    PUBLIC_ID,
    AttestationSerializer,
    DeviceOutputSerializer,
    ReasonSerializer,
    SanitizationSerializer,
    WipeOrderOutputSerializer,
)
from devices.models import Device, DeviceToken, EnrolmentCode
from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from studies.selectors import study_list
from studies.services.reads import study_participants
from tenants import access


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Shown once: send it as `Authorization: Bearer <token>`.")
    expires_at = serializers.DateTimeField()
    attestation_valid_until = serializers.DateTimeField(help_text="Refresh with a new attestation before then.")

    class Meta:
        ref_name = "DeviceToken"


def _token_answer(token: DeviceToken, raw: str, created: bool) -> Response:
    policy = services.device_policy_get(tenant=token.device.tenant)
    body = {
        "token": raw,
        "expires_at": token.expires_at,
        "attestation_valid_until": token.attested_at + timedelta(hours=policy.attestation_max_age_hours),
    }
    return Response(TokenOutputSerializer(body).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _device_token(request: Request) -> DeviceToken:
    if not isinstance(request.auth, DeviceToken):
        raise access.Forbidden("This is for a device, with its own token.", code="device_token_required")
    return request.auth


class DeviceRequestApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(
            choices=Device.Kind.choices, help_text="mobile, workstation or portable_media (not modality)."
        )
        name = serializers.CharField(max_length=120)
        serial = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
        attestation = AttestationSerializer(required=False)

        class Meta:
            ref_name = "DeviceRequest"

    @extend_schema(
        operation_id="device_request",
        tags=["devices"],
        summary="Ask for a device in your own custody (any member)",
        description="A tablet, a workstation or a portable medium, with what it attests now; an administrator "
        "other than you approves it.",
        request=InputSerializer,
        responses={201: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = services.device_request(actor=request.user, **data.validated_data)
        return Response(DeviceOutputSerializer(device).data, status=status.HTTP_201_CREATED)


class DeviceEnrolApi(TenantApi):
    DEVICE_CREDENTIALS = True

    @extend_schema(
        operation_id="device_enrol",
        tags=["devices"],
        summary="Enrol a device: exchange its enrolment code for a token (the code as bearer credential)",
        description="Send `Authorization: Bearer ence_...` and the device's attestation. The code is used up; the "
        "token is bound to the device, its custodian and the tenant. An attestation short of the policy is a 403 "
        "`attestation_failed` naming what is missing.",
        request=AttestationSerializer,
        responses={201: TokenOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        if not isinstance(request.auth, EnrolmentCode):
            raise access.Forbidden("Enrol with the device's enrolment code.", code="enrolment_code_required")
        data = AttestationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, raw = services.device_enrol(code=request.auth, attestation=dict(data.validated_data))
        return _token_answer(token, raw, created=True)


class DeviceSelfRefreshApi(TenantApi):
    DEVICE_CREDENTIALS = True

    @extend_schema(
        operation_id="device_self_refresh",
        tags=["devices"],
        summary="Refresh the device's token with a new attestation (the device's token)",
        description="The attestation is checked against the policy again: if it still passes, a new token replaces "
        "this one; if not, every token of the device is revoked (403 `attestation_failed`).",
        request=AttestationSerializer,
        responses={200: TokenOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        token = _device_token(request)
        data = AttestationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        new, raw = services.device_token_refresh(token=token, attestation=dict(data.validated_data))
        return _token_answer(new, raw, created=False)


class DeviceSelfStatusApi(TenantApi):
    DEVICE_CREDENTIALS = True

    class OutputSerializer(serializers.Serializer):
        device = DeviceOutputSerializer()
        offline_cache_hours = serializers.IntegerField(help_text="How long an offline cache may live.")
        wipe_order = WipeOrderOutputSerializer(allow_null=True, help_text="An open wipe order: carry it out, confirm.")

        class Meta:
            ref_name = "DeviceSelfStatus"

    @extend_schema(
        operation_id="device_self_status",
        tags=["devices"],
        summary="The device's state, grants and pending orders (the device's token)",
        responses={200: OutputSerializer, **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        token = _device_token(request)
        device = Device.objects.select_related("custodian", "requested_by", "approved_by").get(pk=token.device_id)
        policy = services.device_policy_get(tenant=device.tenant)
        body = {
            "device": device,
            "offline_cache_hours": policy.offline_cache_hours,
            "wipe_order": selectors.open_wipe_order_get(device=device),
        }
        return Response(self.OutputSerializer(body).data)


class DeviceSelfWipeConfirmApi(TenantApi):
    DEVICE_CREDENTIALS = True

    @extend_schema(
        operation_id="device_self_wipe_confirm",
        tags=["devices"],
        summary="Confirm the wipe the device was ordered to carry out (the device's token)",
        description="Closes the open order with its sanitization record; the device is wiped and its tokens revoked.",
        request=SanitizationSerializer,
        responses={200: WipeOrderOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        token = _device_token(request)
        data = SanitizationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        order = services.device_wipe_confirm(token=token, **data.validated_data)
        return Response(WipeOrderOutputSerializer(order).data)


class DeviceReportLostApi(TenantApi):
    @extend_schema(
        operation_id="device_report_lost",
        tags=["devices"],
        summary="Report a device lost (its custodian, or tenants.manage_devices)",
        description="Its tokens are revoked at once, a wipe order opens and a security alert is raised.",
        parameters=[PUBLIC_ID],
        request=ReasonSerializer,
        responses={200: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        device = selectors.device_for_custodian_get(actor=request.user, public_id=public_id)
        data = ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = services.device_report_lost(actor=request.user, device=device, **data.validated_data)
        return Response(DeviceOutputSerializer(device).data)


class MediaExportCreateApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        studies = serializers.ListField(
            child=serializers.CharField(max_length=64),
            min_length=1,
            max_length=500,
            help_text="Study Instance UIDs written to the medium.",
        )
        deidentified = serializers.BooleanField()
        recipient = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

        class Meta:
            ref_name = "MediaExport"

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField(source="public_id")
        device = serializers.UUIDField(source="device.public_id")
        study_uids = serializers.ListField(child=serializers.CharField())
        patient_count = serializers.IntegerField()
        deidentified = serializers.BooleanField()
        recipient = serializers.CharField()
        created_at = serializers.DateTimeField()

        class Meta:
            ref_name = "MediaExportRecord"

    @extend_schema(
        operation_id="media_export_create",
        tags=["devices"],
        summary="Record studies written to a portable medium (a disclosure)",
        description="The medium must be approved with the export grant; the studies ones you see; identified data "
        "needs tenants.export_identified. Recorded before anything is written, naming the patients and the medium.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={201: OutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if not access.may_see_images(request.user, self.tenant):
            raise access.Forbidden()
        try:
            device = Device.objects.get(public_id=public_id, kind=Device.Kind.PORTABLE_MEDIA)
        except (Device.DoesNotExist, ValidationError, ValueError, TypeError) as exc:  # a malformed id: 404 too
            raise access.NotVisible() from exc
        uids = list(dict.fromkeys(data.validated_data["studies"]))
        studies = list(study_list(actor=request.user).filter(study_instance_uid__in=uids).select_related("patient"))
        if len(studies) != len(uids):
            raise access.NotVisible()
        participants: list[Any] = [p for study in studies for p in study_participants(study)]
        row = services.media_export_record(
            actor=request.user,
            device=device,
            studies=studies,
            participants=participants,
            deidentified=data.validated_data["deidentified"],
            recipient=data.validated_data["recipient"],
        )
        return Response(self.OutputSerializer(row).data, status=status.HTTP_201_CREATED)
