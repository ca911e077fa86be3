"""REST API of the device registry, under /api/v1/t/<tenant>/devices/, for tenant administrators
(`tenants.manage_devices`).

One class per operation (shared/STYLE.md §7). Each parses its input, calls one selector or service and
serializes the result; devices are found by `public_id` through the selectors, so another tenant's id is a 404
with the same body as a made-up one. A member without the permission gets a 403 (and an audit event) from every
endpoint, whatever the id.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from devices import selectors, services
from devices.models import Device
from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from portal.web.pagination import PAGE_PARAMETERS, page_of, paginated
from tenants import access

PERMISSION = "tenants.manage_devices"
PUBLIC_ID = OpenApiParameter("public_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The device's id.")


class DeviceOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    kind = serializers.ChoiceField(choices=Device.Kind.choices)
    name = serializers.CharField()
    ae_title = serializers.CharField(help_text="The device's calling AE title; empty for devices that speak no DICOM.")
    host = serializers.IPAddressField(allow_null=True, help_text="The address it must connect from; null: any.")
    port = serializers.IntegerField(allow_null=True, help_text="Where it listens for C-MOVE deliveries; null: none.")
    status = serializers.ChoiceField(choices=Device.Status.choices)
    requested_by = serializers.CharField(
        source="requested_by.username", allow_null=True, help_text="Who registered it; null: the platform operators."
    )
    approved_by = serializers.CharField(
        source="approved_by.username", allow_null=True, help_text="Who approved it; null if not approved by a member."
    )
    approved_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Device"


def _require_manage_devices(request: Request, api: TenantApi) -> None:
    access.require(request.user, PERMISSION, api.tenant)


class DeviceListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Device.Status.choices, required=False)
        kind = serializers.ChoiceField(choices=Device.Kind.choices, required=False)

    OutputSerializer = DeviceOutputSerializer

    @extend_schema(
        operation_id="device_list",
        tags=["devices"],
        summary="List the tenant's devices (tenants.manage_devices)",
        description="Every registered device by name; filter by `status` and `kind`.",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={200: page_of(DeviceOutputSerializer, "DevicePage"), **problem_responses(400, 401, 403, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        _require_manage_devices(request, self)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = selectors.device_list(actor=request.user, **filters.validated_data)
        return paginated(self, request, rows, self.OutputSerializer)


class DeviceRegisterApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=Device.Kind.choices)
        name = serializers.CharField(max_length=120)
        ae_title = serializers.CharField(
            max_length=16,
            required=False,
            allow_blank=True,
            help_text="The device's calling AE title; required for modalities and workstations, unique in the tenant.",
        )
        host = serializers.CharField(
            max_length=45,
            required=False,
            allow_blank=True,
            allow_null=True,
            help_text="The IP address it connects from; associations from any other address are refused.",
        )
        port = serializers.IntegerField(
            required=False,
            allow_null=True,
            min_value=1,
            max_value=65535,
            help_text="Where the device listens for C-MOVE deliveries (with its host); empty if it only sends.",
        )

        class Meta:
            ref_name = "DeviceRegister"

    OutputSerializer = DeviceOutputSerializer

    @extend_schema(
        operation_id="device_register",
        tags=["devices"],
        summary="Register a device, pending approval (tenants.manage_devices)",
        description="The device is `pending` until another administrator approves it; until then its DICOM "
        "associations are refused. The host is checked by the same rules as the page (an IP address).",
        request=InputSerializer,
        responses={201: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str) -> Response:
        _require_manage_devices(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = services.device_register(actor=request.user, **data.validated_data)
        return Response(self.OutputSerializer(device).data, status=status.HTTP_201_CREATED)


class DeviceGetApi(TenantApi):
    OutputSerializer = DeviceOutputSerializer

    @extend_schema(
        operation_id="device_get",
        tags=["devices"],
        summary="One device (tenants.manage_devices)",
        description="A device by its id. Another tenant's id is a 404, the same as an id that does not exist.",
        parameters=[PUBLIC_ID],
        responses={200: DeviceOutputSerializer, **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        return Response(self.OutputSerializer(device).data)


class DeviceApproveApi(TenantApi):
    OutputSerializer = DeviceOutputSerializer

    @extend_schema(
        operation_id="device_approve",
        tags=["devices"],
        summary="Approve a pending device (tenants.manage_devices, a second administrator)",
        description="The administrator who registered the device may not approve it: that is a 403 with code "
        "`two_person_rule`, on the audit trail. Approving an approved device changes nothing; a revoked or retired "
        "one is a 400.",
        parameters=[PUBLIC_ID],
        request=None,
        responses={200: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        device = services.device_approve(actor=request.user, device=device)
        return Response(self.OutputSerializer(device).data)


class DeviceRevokeApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=200, help_text="Why the device is revoked; kept on the audit trail.")

        class Meta:
            ref_name = "DeviceRevoke"

    OutputSerializer = DeviceOutputSerializer

    @extend_schema(
        operation_id="device_revoke",
        tags=["devices"],
        summary="Revoke a pending or approved device (tenants.manage_devices)",
        description="Its next DICOM association is refused. One administrator is enough. Revoking a revoked "
        "device changes nothing; a retired one is a 400.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        device = services.device_revoke(actor=request.user, device=device, **data.validated_data)
        return Response(self.OutputSerializer(device).data)
