"""Reads of the device registry."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError
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


def move_destination_get(*, ae_title: str) -> tuple[str, int] | None:
    """Where to send a C-MOVE's objects for the move destination `ae_title`: the (host, port) of the approved
    modality or workstation of the current tenant with that AE title, registered with both. None otherwise
    (another tenant's device, a pending or revoked one, or one we do not know how to reach)."""
    device = Device.objects.filter(
        ae_title=(ae_title or "").strip().upper(),
        status=Device.Status.APPROVED,
        kind__in=[Device.Kind.MODALITY, Device.Kind.WORKSTATION],
        host__isnull=False,
        port__isnull=False,
    ).first()
    if device is None or not device.host or not device.port:
        return None
    return str(device.host), int(device.port)


def device_list(*, actor: Any, status: str | None = None, kind: str | None = None) -> models.QuerySet[Device]:
    """The current tenant's devices, for members who manage them (`tenants.manage_devices`), optionally only those
    with `status` and/or `kind`, with who requested and approved each."""
    qs = access.visible(actor, "tenants.manage_devices", Device.objects.all())
    if status:
        qs = qs.filter(status=status)
    if kind:
        qs = qs.filter(kind=kind)
    return qs.select_related("requested_by", "approved_by").order_by("name", "pk")


def device_get(*, actor: Any, public_id: UUID | str) -> Device:
    """One device of the current tenant by public id, or `NotVisible` (also for a malformed id or another
    tenant's device)."""
    try:
        return device_list(actor=actor).get(public_id=public_id)
    except (Device.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc
