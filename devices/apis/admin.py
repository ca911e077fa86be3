"""REST API of the device registry for tenant administrators (`tenants.manage_devices`), under
/api/v1/t/<tenant>/devices/: the register, requests and approval, the life cycle, custody, grants, wipe orders
and sanitization records, and the tenant's device policy.

One class per operation (shared/STYLE.md §7). Devices are found by `public_id` through the selectors, so another
tenant's id is a 404 with the same body as a made-up one. A member without the permission gets a 403 (and an
ACCESS_DENIED event) from every endpoint, whatever the id. A step the life cycle does not allow is a 409 that
lists the allowed next states.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from devices import selectors, services
from devices.apis.common import (
    PERMISSION,
    PUBLIC_ID,
    DeviceOutputSerializer,
    ReasonSerializer,
    SanitizationSerializer,
    WipeOrderOutputSerializer,
)
from devices.models import Device, Grant
from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from portal.web.pagination import PAGE_PARAMETERS, page_of, paginated
from tenants import access
from tenants.models import User


def _require_manage_devices(request: Request, api: TenantApi) -> None:
    access.require(request.user, PERMISSION, api.tenant)


def _member(username: str) -> User:
    user = User.objects.filter(username=username).first()
    if user is None:
        raise serializers.ValidationError({"custodian": ["No such member."]})
    return user


class DeviceListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Device.Status.choices, required=False)
        kind = serializers.ChoiceField(choices=Device.Kind.choices, required=False)
        custodian = serializers.CharField(required=False, help_text="The custodian's user name.")
        serial = serializers.CharField(required=False, help_text="An exact serial number (matched by its hash).")

    OutputSerializer = DeviceOutputSerializer

    @extend_schema(
        operation_id="device_list",
        tags=["devices"],
        summary="List the tenant's devices (tenants.manage_devices)",
        description="Every registered device by name; filter by `status`, `kind`, `custodian` and exact `serial`.",
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
            help_text="The device's calling AE title; required for modalities, unique in the tenant.",
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
        custodian = serializers.CharField(required=False, help_text="The user name of the member who holds it.")
        serial = serializers.CharField(
            max_length=100, required=False, allow_blank=True, help_text="Kept only as a keyed hash: never shown."
        )
        certificate_sha256 = serializers.CharField(
            max_length=100,
            required=False,
            allow_blank=True,
            help_text="SHA-256 fingerprint of the TLS client certificate the DICOM device must present (hex, colons "
            "allowed); empty: any certificate the listener's CA signed.",
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
        args: dict[str, Any] = dict(data.validated_data)
        if args.get("custodian"):
            args["custodian"] = _member(args["custodian"])
        device = services.device_register(actor=request.user, **args)
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
    class InputSerializer(serializers.Serializer):
        grants = serializers.ListField(
            child=serializers.ChoiceField(choices=Grant.choices),
            required=False,
            help_text="What it may be used for, within the policy for its kind; default: the first of its kind "
            "(view; export to media; send by DICOM).",
        )
        reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

        class Meta:
            ref_name = "DeviceApprove"

    OutputSerializer = DeviceOutputSerializer

    @extend_schema(
        operation_id="device_approve",
        tags=["devices"],
        summary="Approve a requested device, or reinstate a suspended one (tenants.manage_devices)",
        description="The administrator who registered the device may not approve it: that is a 403 with code "
        "`two_person_rule`, on the audit trail. A mobile device or workstation must have attested what the policy "
        "asks (else 400). Approving an approved device changes nothing; any other state is a 409.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        device = services.device_approve(actor=request.user, device=device, **data.validated_data)
        return Response(self.OutputSerializer(device).data)


class _ReasonedStepApi(TenantApi):
    """A life-cycle step with a reason: parse, find the device, call the service, answer the device."""

    OutputSerializer = DeviceOutputSerializer
    InputSerializer = ReasonSerializer

    def step(self, request: Request, public_id: str, service: Any) -> Response:
        _require_manage_devices(request, self)
        data = ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        service(actor=request.user, device=device, **data.validated_data)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        return Response(DeviceOutputSerializer(device).data)


def _step_schema(operation_id: str, summary: str, description: str) -> Any:
    return extend_schema(
        operation_id=operation_id,
        tags=["devices"],
        summary=summary,
        description=description,
        parameters=[PUBLIC_ID],
        request=ReasonSerializer,
        responses={200: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404, 409)},
    )


class DeviceRevokeApi(_ReasonedStepApi):
    @_step_schema(
        "device_revoke",
        "Revoke a requested or approved device (tenants.manage_devices)",
        "Its next DICOM association is refused and its tokens stop working. One administrator is enough. "
        "Revoking a revoked device changes nothing; other states are a 409.",
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        return self.step(request, public_id, services.device_revoke)


class DeviceSuspendApi(_ReasonedStepApi):
    @_step_schema(
        "device_suspend",
        "Suspend an approved device (tenants.manage_devices)",
        "Its tokens are revoked at once and its DICOM associations refused at their next request. "
        "Approve it again to reinstate it.",
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        return self.step(request, public_id, services.device_suspend)


class DeviceWipeOrderApi(_ReasonedStepApi):
    @_step_schema(
        "device_order_wipe",
        "Order a device wiped (tenants.manage_devices)",
        "The device learns of the order at its next contact (`device_self_status`) and confirms it; its "
        "token then works for nothing else.",
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        return self.step(request, public_id, services.device_wipe_order)


class DeviceRetireApi(_ReasonedStepApi):
    @_step_schema(
        "device_retire",
        "Retire a wiped device (tenants.manage_devices)",
        "Only a wiped device, whose wipe order closed with its sanitization record; else 409 or 400.",
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        return self.step(request, public_id, services.device_retire)


class DeviceSanitizationRecordApi(TenantApi):
    @extend_schema(
        operation_id="device_sanitization_record",
        tags=["devices"],
        summary="Close a device's wipe order with its sanitization record (tenants.manage_devices)",
        description="NIST SP 800-88 r1: the method (clear, purge, destroy), the tool, how it was verified, and "
        "evidence. The device becomes wiped. For a device that cannot confirm itself (lost, destroyed media).",
        parameters=[PUBLIC_ID],
        request=SanitizationSerializer,
        responses={200: WipeOrderOutputSerializer, **problem_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        data = SanitizationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        order = services.device_sanitization_record(actor=request.user, device=device, **data.validated_data)
        return Response(WipeOrderOutputSerializer(order).data)


class DeviceCustodianApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        custodian = serializers.CharField(help_text="The user name of the member who will hold it.")
        reason = serializers.CharField(max_length=200)

        class Meta:
            ref_name = "DeviceCustodian"

    @extend_schema(
        operation_id="device_custodian_change",
        tags=["devices"],
        summary="Give a device to a custodian (tenants.manage_devices)",
        description="A device that had a custodian must be wiped first, with its sanitization record; it then "
        "goes back to requested, to be approved again.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        device = services.device_custodian_change(
            actor=request.user,
            device=device,
            custodian=_member(data.validated_data["custodian"]),
            reason=data.validated_data["reason"],
        )
        return Response(DeviceOutputSerializer(device).data)


class DeviceGrantsApi(TenantApi):
    class InputSerializer(serializers.Serializer):
        grants = serializers.ListField(child=serializers.ChoiceField(choices=Grant.choices))

        class Meta:
            ref_name = "DeviceGrants"

    @extend_schema(
        operation_id="device_grants_set",
        tags=["devices"],
        summary="Set what a device may be used for (tenants.manage_devices)",
        description="Within the policy's grants for its kind. A grant never widens what its person may see.",
        parameters=[PUBLIC_ID],
        request=InputSerializer,
        responses={200: DeviceOutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def put(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        device = services.device_grants_set(actor=request.user, device=device, **data.validated_data)
        return Response(DeviceOutputSerializer(device).data)


class DeviceHistoryApi(TenantApi):
    class OutputSerializer(serializers.Serializer):
        class Custody(serializers.Serializer):
            custodian = serializers.CharField(source="custodian.username")
            started_at = serializers.DateTimeField()
            ended_at = serializers.DateTimeField(allow_null=True)

        class Event(serializers.Serializer):
            occurred_at = serializers.DateTimeField()
            event = serializers.SerializerMethodField()
            actor = serializers.CharField(source="actor_username")
            outcome = serializers.IntegerField()
            reason = serializers.SerializerMethodField()

            def get_event(self, row: Any) -> str:
                return str(row.verb)

            def get_reason(self, row: Any) -> str:
                return str((row.extra or {}).get("reason", ""))

        custody = Custody(many=True)
        wipe_orders = WipeOrderOutputSerializer(many=True)
        events = Event(many=True)

        class Meta:
            ref_name = "DeviceHistory"

    @extend_schema(
        operation_id="device_history",
        tags=["devices"],
        summary="A device's history: custody, wipe orders, events (tenants.manage_devices)",
        parameters=[PUBLIC_ID],
        responses={200: OutputSerializer, **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str, public_id: str) -> Response:
        _require_manage_devices(request, self)
        device = selectors.device_get(actor=request.user, public_id=public_id)
        return Response(self.OutputSerializer(selectors.device_history(device=device)).data)


class EnrolmentCodeIssueApi(TenantApi):
    class OutputSerializer(serializers.Serializer):
        code = serializers.CharField(help_text="Shown once; single use; give it to the device's enrolment.")
        expires_at = serializers.DateTimeField()

        class Meta:
            ref_name = "DeviceEnrolmentCode"

    @extend_schema(
        operation_id="device_enrolment_code_issue",
        tags=["devices"],
        summary="An enrolment code for an approved device (its custodian, or tenants.manage_devices)",
        description="Valid 15 minutes, single use; the token it buys is bound to the device and its custodian.",
        parameters=[PUBLIC_ID],
        request=None,
        responses={201: OutputSerializer, **problem_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, tenant: str, public_id: str) -> Response:
        device = selectors.device_for_custodian_get(actor=request.user, public_id=public_id)
        code, raw = services.enrolment_code_issue(actor=request.user, device=device)
        return Response({"code": raw, "expires_at": code.expires_at}, status=status.HTTP_201_CREATED)


class WipeOrderListApi(TenantApi):
    class FilterSerializer(serializers.Serializer):
        open = serializers.BooleanField(required=False, default=False, help_text="Only orders still open.")

    @extend_schema(
        operation_id="wipe_order_list",
        tags=["devices"],
        summary="The tenant's wipe orders with their sanitization records (tenants.manage_devices)",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={200: page_of(WipeOrderOutputSerializer, "WipeOrderPage"), **problem_responses(400, 401, 403, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        _require_manage_devices(request, self)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = selectors.wipe_order_list(actor=request.user, open_only=filters.validated_data["open"])
        return paginated(self, request, rows, WipeOrderOutputSerializer)


class DevicePolicySerializer(serializers.Serializer):
    require_disk_encryption = serializers.BooleanField()
    require_screen_lock = serializers.BooleanField()
    require_mdm = serializers.BooleanField()
    minimum_os_version = serializers.CharField(max_length=20, allow_blank=True)
    attestation_max_age_hours = serializers.IntegerField(min_value=1, max_value=24 * 30)
    token_hours = serializers.IntegerField(min_value=1, max_value=24 * 30)
    offline_cache_hours = serializers.IntegerField(min_value=0, max_value=24 * 90)
    wipe_order_max_hours = serializers.IntegerField(min_value=1, max_value=24 * 90)
    grants_by_kind = serializers.DictField(
        child=serializers.ListField(child=serializers.ChoiceField(choices=Grant.choices)),
        help_text="Which grants each kind may receive; empty: the defaults.",
    )

    class Meta:
        ref_name = "DevicePolicy"


class DevicePolicyGetApi(TenantApi):
    @extend_schema(
        operation_id="device_policy_get",
        tags=["devices"],
        summary="The tenant's device policy (tenants.manage_devices)",
        responses={200: DevicePolicySerializer, **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str) -> Response:
        _require_manage_devices(request, self)
        return Response(DevicePolicySerializer(services.device_policy_get(tenant=self.tenant)).data)


class DevicePolicyUpdateApi(TenantApi):
    @extend_schema(
        operation_id="device_policy_update",
        tags=["devices"],
        summary="Change the tenant's device policy (tenants.manage_devices)",
        description="Send the fields to change. Tokens are held to it at their next refresh.",
        request=DevicePolicySerializer(partial=True),
        responses={200: DevicePolicySerializer, **problem_responses(400, 401, 403, 404)},
    )
    def patch(self, request: Request, tenant: str) -> Response:
        _require_manage_devices(request, self)
        data = DevicePolicySerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        policy = services.device_policy_update(actor=request.user, **data.validated_data)
        return Response(DevicePolicySerializer(policy).data)
