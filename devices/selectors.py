"""Reads of the device registry."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import models

from audit.models import AuditEvent
from audit.selectors import ReportSection
from devices.models import (
    Attestation,
    CustodyPeriod,
    Device,
    DevicePolicy,
    MediaExport,
    WipeOrder,
    serial_digest_of,
)
from tenants import access
from tenants.scoping import current_tenant


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


def device_list(
    *,
    actor: Any,
    status: str | None = None,
    kind: str | None = None,
    custodian: str | None = None,
    serial: str | None = None,
) -> models.QuerySet[Device]:
    """The current tenant's devices, for members who see the register (`tenants.view_devices`), optionally only those
    with `status`, `kind`, custodian (user name) and/or exact serial (matched by its keyed hash), with who
    requested and approved each and who holds it."""
    qs = access.visible(actor, "tenants.view_devices", Device.objects.all())
    if status:
        qs = qs.filter(status=status)
    if kind:
        qs = qs.filter(kind=kind)
    if custodian:
        qs = qs.filter(custodian__username=custodian)
    if serial:
        qs = qs.filter(serial_digest=serial_digest_of(serial))
    return qs.select_related("requested_by", "approved_by", "custodian").order_by("name", "pk")


def device_get(*, actor: Any, public_id: UUID | str) -> Device:
    """One device of the current tenant by public id, or `NotVisible` (also for a malformed id or another
    tenant's device)."""
    try:
        return device_list(actor=actor).get(public_id=public_id)
    except (Device.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def device_counts_by_status(*, actor: Any) -> dict[str, int]:
    """How many of the tenant's devices are in each state (every state, zero included)."""
    counts = dict.fromkeys(Device.Status.values, 0)
    for row in device_list(actor=actor).order_by().values("status").annotate(n=models.Count("pk")):
        counts[row["status"]] = row["n"]
    return counts


def device_history(*, device: Device) -> dict[str, Any]:
    """A device the caller already holds (through `device_get`): its custody periods, attestations, wipe orders,
    media exports and every audit event that names it, newest first."""
    return {
        "custody": list(CustodyPeriod.objects.filter(device=device).select_related("custodian", "assigned_by")),
        "attestations": list(Attestation.objects.filter(device=device)[:20]),
        "wipe_orders": list(WipeOrder.objects.filter(device=device).select_related("ordered_by", "sanitized_by")),
        "media_exports": list(MediaExport.objects.filter(device=device).select_related("actor")[:50]),
        "events": list(
            AuditEvent.objects.filter(target_type="devices.device", target_id=str(device.public_id))
            .select_related("actor_user")
            .order_by("-occurred_at", "-sequence")[:200]
        ),
    }


def open_wipe_order_get(*, device: Device) -> WipeOrder | None:
    return WipeOrder.objects.filter(device=device, sanitized_at__isnull=True).first()


def wipe_order_list(*, actor: Any, open_only: bool = False) -> models.QuerySet[WipeOrder]:
    """The current tenant's wipe orders (`tenants.view_devices`), newest first."""
    qs = access.visible(actor, "tenants.view_devices", WipeOrder.objects.all())
    if open_only:
        qs = qs.filter(sanitized_at__isnull=True)
    return qs.select_related("device", "ordered_by", "sanitized_by", "confirmed_by").order_by("-created_at", "-pk")


def device_for_custodian_get(*, actor: Any, public_id: UUID | str) -> Device:
    """A device the actor manages (`tenants.manage_devices`) or holds (its custodian), or `NotVisible`. Not with a
    device-bound credential (`Forbidden`): a device does not manage devices, its own included."""
    if not access.credential_allows(actor, "custody"):
        raise access.Forbidden("Not with a device's token.", code="device_not_granted")
    if access.has_perm(actor, "tenants.manage_devices", current_tenant()):
        return device_get(actor=actor, public_id=public_id)
    try:
        return Device.objects.select_related("custodian").get(public_id=public_id, custodian=actor)
    except (Device.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def devices_compliance_section(actor: Any) -> ReportSection:
    """The compliance report's devices section: the register's counts by state (every state), lost devices and
    open wipe orders. Counts only, for anyone who may read the report."""
    counts = dict.fromkeys(Device.Status.values, 0)
    for row in Device.objects.order_by().values("status").annotate(n=models.Count("pk")):
        counts[row["status"]] = row["n"]
    open_wipes = WipeOrder.objects.filter(confirmed_at__isnull=True).count()
    rows = [(label, str(counts[value])) for value, label in Device.Status.choices]
    rows.append(("Wipe orders not yet confirmed", str(open_wipes)))
    return ReportSection("Devices holding patient data", rows, ok=counts[Device.Status.LOST] == 0 and open_wipes == 0)


def device_records_export() -> dict[str, list[dict[str, Any]]]:
    """The current tenant's device records for its offboarding export (issue 13): devices, policy, attestations,
    custody, wipe orders (with sanitization) and media exports; never tokens or enrolment codes (secrets). For
    the offboarding service only (two operators approved it); plain JSON-ready data."""
    return {
        name: [dict(row) for row in model.objects.order_by("pk").values()]  # type: ignore[attr-defined]
        for name, model in (
            ("devices", Device),
            ("policies", DevicePolicy),
            ("attestations", Attestation),
            ("custody", CustodyPeriod),
            ("wipe_orders", WipeOrder),
            ("media_exports", MediaExport),
        )
    }
