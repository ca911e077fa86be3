"""Writes of the device registry. Approval takes a second person (SECURITY.md C1)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record
from devices.models import Device
from tenants import access
from tenants.scoping import current_tenant


def _ae_title_free_check(device: Device) -> None:
    """A clear message for an AE title already in the tenant's registry, in any status (the database constraint
    alone would only say that a constraint is violated)."""
    ae_title = (device.ae_title or "").strip().upper()
    if not ae_title:
        return
    taken = Device.objects.filter(ae_title=ae_title).exclude(pk=device.pk).first()
    if taken is not None:
        raise ValidationError(
            {"ae_title": f"The AE title {ae_title} is already registered for “{taken.name}” "
                         f"({taken.get_status_display().lower()}). Each device of the organisation needs its own."}
        )  # fmt: skip


@transaction.atomic
def device_register(
    *, actor: Any, kind: str, name: str, ae_title: str = "", host: str | None = None, port: int | None = None
) -> Device:
    """Register a device in the current tenant, pending approval (`tenants.manage_devices`). Its AE title must be
    new to the tenant's registry, whatever the other device's status. Records DEVICE_REGISTERED."""
    tenant = current_tenant()
    access.require(actor, "tenants.manage_devices", tenant)
    device = Device(
        tenant=tenant, kind=kind, name=name, ae_title=ae_title, host=host or None, port=port, requested_by=actor
    )
    _ae_title_free_check(device)
    device.full_clean()
    try:
        with transaction.atomic():
            device.save()
    except IntegrityError:  # registered by someone else between the check and the insert
        _ae_title_free_check(device)
        raise
    audit_event_record(event=EventType.DEVICE_REGISTERED, actor=actor, target=device,
                       extra={"kind": kind, "ae_title": device.ae_title, "host": host, "port": port})  # fmt: skip
    return device


@transaction.atomic
def device_approve(*, actor: Any, device: Device) -> Device:
    """Approve a pending device (`tenants.manage_devices`), by someone other than who registered it.
    Idempotent for an approved device. Records DEVICE_APPROVED."""
    access.require(actor, "tenants.manage_devices", device)
    device = Device.objects.select_for_update().get(pk=device.pk)
    if device.status == Device.Status.APPROVED:
        return device
    if device.status != Device.Status.PENDING:
        raise ValidationError({"status": f"A {device.get_status_display().lower()} device cannot be approved."})
    if device.requested_by_id == getattr(actor, "pk", None):
        raise access.Forbidden(
            "A device is approved by another administrator than the one who registered it.", code="two_person_rule"
        )
    device.status, device.approved_by, device.approved_at = Device.Status.APPROVED, actor, timezone.now()
    device.save(update_fields=["status", "approved_by", "approved_at", "updated_at"])
    audit_event_record(event=EventType.DEVICE_APPROVED, actor=actor, target=device)
    return device


@transaction.atomic
def device_revoke(*, actor: Any, device: Device, reason: str) -> Device:
    """Withdraw a pending or approved device (`tenants.manage_devices`): its next DICOM association is refused.
    One administrator is enough, unlike approval, so that a lost or compromised device is shut out at once.
    Idempotent for a revoked device. Records DEVICE_REVOKED with the reason and the status it had."""
    access.require(actor, "tenants.manage_devices", device)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the device is revoked: the reason is kept on the audit trail."})
    device = Device.objects.select_for_update().get(pk=device.pk)
    if device.status == Device.Status.REVOKED:
        return device
    if device.status not in (Device.Status.PENDING, Device.Status.APPROVED):
        raise ValidationError({"status": f"A {device.get_status_display().lower()} device cannot be revoked."})
    previous = device.status
    device.status = Device.Status.REVOKED
    device.save(update_fields=["status", "updated_at"])
    audit_event_record(event=EventType.DEVICE_REVOKED, actor=actor, target=device,
                       extra={"reason": reason, "previous_status": previous, "ae_title": device.ae_title})  # fmt: skip
    return device


@transaction.atomic
def device_register_approved_by_operator(
    *, kind: str, name: str, ae_title: str, host: str | None, reason: str, operator: Any = None
) -> Device:
    """Platform work (the demo, a tenant's first modality): register and approve in one step in the current
    tenant. Idempotent by AE title. Records DEVICE_REGISTERED and DEVICE_APPROVED."""
    tenant = current_tenant()
    device = Device.objects.filter(ae_title=ae_title.upper()).first() if ae_title else None
    if device is not None:
        return device
    device = Device(tenant=tenant, kind=kind, name=name, ae_title=ae_title, host=host or None,
                    status=Device.Status.APPROVED, approved_at=timezone.now())  # fmt: skip
    device.full_clean()
    device.save()
    for event in (EventType.DEVICE_REGISTERED, EventType.DEVICE_APPROVED):
        audit_event_record(event=event, actor=operator, target=device, system_principal="enclave:platform",
                           extra={"reason": reason, "ae_title": device.ae_title, "host": host})  # fmt: skip
    return device
