"""Shared serializers of the device APIs."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from devices.models import Device, Grant, WipeOrder

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
    allowed_next = serializers.ListField(
        child=serializers.ChoiceField(choices=Device.Status.choices), help_text="The states it may move to next."
    )
    custodian = serializers.CharField(source="custodian.username", allow_null=True, help_text="Who holds it.")
    grants = serializers.ListField(child=serializers.ChoiceField(choices=Grant.choices))
    certificate_sha256 = serializers.CharField(
        help_text="The SHA-256 of the TLS client certificate it must present; empty: any the listener's CA signed."
    )
    serial_recorded = serializers.SerializerMethodField(help_text="Whether a serial is on record (kept only hashed).")
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

    def get_serial_recorded(self, device: Device) -> bool:
        return bool(device.serial_digest)


class WipeOrderOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    device = serializers.UUIDField(source="device.public_id")
    reason = serializers.CharField()
    ordered_by = serializers.CharField(source="ordered_by.username", allow_null=True, help_text="null: the system.")
    ordered_at = serializers.DateTimeField(source="created_at")
    confirmed_at = serializers.DateTimeField(allow_null=True, help_text="When the device confirmed the wipe.")
    method = serializers.ChoiceField(choices=WipeOrder.Method.choices, allow_blank=True)
    tool = serializers.CharField()
    verification = serializers.CharField()
    evidence = serializers.CharField()
    sanitized_by = serializers.CharField(source="sanitized_by.username", allow_null=True)
    sanitized_at = serializers.DateTimeField(allow_null=True, help_text="null: the order is still open.")

    class Meta:
        ref_name = "WipeOrder"


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200, help_text="Why; kept on the audit trail.")

    class Meta:
        ref_name = "DeviceReason"


class AttestationSerializer(serializers.Serializer):
    disk_encrypted = serializers.BooleanField()
    screen_lock = serializers.BooleanField()
    mdm_managed = serializers.BooleanField()
    os_version = serializers.CharField(max_length=20, allow_blank=True)

    class Meta:
        ref_name = "DeviceAttestation"


class SanitizationSerializer(serializers.Serializer):
    method = serializers.ChoiceField(
        choices=WipeOrder.Method.choices, help_text="NIST SP 800-88: clear, purge, destroy."
    )
    tool = serializers.CharField(max_length=200, help_text="The tool or procedure used.")
    verification = serializers.CharField(max_length=300, help_text="How the result was verified.")
    evidence = serializers.CharField(required=False, allow_blank=True, default="", help_text="A certificate, a log.")

    class Meta:
        ref_name = "DeviceSanitization"
