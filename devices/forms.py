"""Forms of the devices page. They parse input; the services and the model decide what a valid device is."""

from __future__ import annotations

from typing import Any

from django import forms

from devices.models import Device


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
