"""Reads of the device registry."""

from __future__ import annotations

from typing import Any

from django.db import models

from devices.models import Device
from tenants import access


def dicom_peer_get(*, ae_title: str, address: str | None) -> Device | None:
    """The approved modality or workstation of the current tenant with this calling AE title, if it connects from
    its registered host (a device registered without a host may connect from anywhere). None otherwise."""
    device = Device.objects.filter(
        ae_title=(ae_title or "").strip().upper(),
        status=Device.Status.APPROVED,
        kind__in=[Device.Kind.MODALITY, Device.Kind.WORKSTATION],
    ).first()
    if device is None:
        return None
    if device.host and device.host != address:
        return None
    return device


def device_list(*, actor: Any) -> models.QuerySet[Device]:
    """The current tenant's devices, for members who manage them."""
    return access.visible(actor, "tenants.manage_devices", Device.objects.all()).order_by("name")
