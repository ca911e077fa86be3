"""Forms of the devices page. They parse input; the services and the model decide what a valid device is."""

from __future__ import annotations

from typing import Any

from django import forms

from devices.models import Device, WipeOrder


class DeviceRegisterForm(forms.Form):
    kind = forms.ChoiceField(choices=Device.Kind.choices, initial=Device.Kind.MODALITY)
    name = forms.CharField(max_length=120, help_text="What people call it, such as “CT 2, emergency department”.")
    ae_title = forms.CharField(
        label="AE title",
        max_length=16,
        required=False,
        help_text="The calling AE title configured on the device (up to 16 characters). Needed for modalities "
        "and workstations.",
    )
    host = forms.CharField(
        label="Host (IP address)",
        max_length=45,
        required=False,
        help_text="The address the device connects from. Associations from any other address are refused.",
    )

    port = forms.IntegerField(
        label="DICOM port (optional)",
        required=False,
        min_value=1,
        max_value=65535,
        help_text="Where the device listens for images Enclave sends it (C-MOVE). Leave empty if it only sends.",
    )

    def service_arguments(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        data["host"] = data["host"].strip() or None
        return data


class DeviceRevokeForm(forms.Form):
    reason = forms.CharField(
        max_length=200,
        help_text="Kept on the audit trail.",
        error_messages={"required": "Say why the device is revoked: the reason is kept on the audit trail."},
    )


class DeviceRequestForm(forms.Form):
    """A member asks for a device in their own custody, with what it attests now."""

    kind = forms.ChoiceField(
        choices=[(k, v) for k, v in Device.Kind.choices if k != Device.Kind.MODALITY], initial=Device.Kind.MOBILE
    )
    name = forms.CharField(max_length=120, help_text="Such as “Reading tablet, Dr. Lee”.")
    serial = forms.CharField(max_length=100, required=False, help_text="Kept only as a keyed hash: never shown.")
    disk_encrypted = forms.BooleanField(required=False, label="Its disk is encrypted")
    screen_lock = forms.BooleanField(required=False, label="It locks its screen")
    mdm_managed = forms.BooleanField(required=False, label="It is managed by the organisation's MDM")
    os_version = forms.CharField(max_length=20, required=False, label="Operating system version")

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        attestation = {key: data[key] for key in ("disk_encrypted", "screen_lock", "mdm_managed", "os_version")}
        return {"kind": data["kind"], "name": data["name"], "serial": data["serial"], "attestation": attestation}


class SanitizationForm(forms.Form):
    """The record that closes a wipe order (NIST SP 800-88 r1)."""

    method = forms.ChoiceField(choices=WipeOrder.Method.choices, help_text="Clear, purge or destroy.")
    tool = forms.CharField(max_length=200, help_text="The tool or procedure used.")
    verification = forms.CharField(max_length=300, help_text="How the result was verified.")
    evidence = forms.CharField(max_length=2000, required=False, help_text="A certificate number, a log reference.")
