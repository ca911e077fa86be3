"""Lost devices, wipe orders, sanitization records (NIST SP 800-88 r1) and retirement."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record, security_alert_raise
from devices.models import Device, DeviceToken, IllegalTransition, WipeOrder
from devices.services.registry import MANAGE, _locked, _move, _reason, device_policy_get, tokens_revoke
from tenants import access
from tenants.models import Tenant, User
from tenants.scoping import current_tenant, tenant_scope


def _custodian_or_manager(actor: Any, device: Device) -> None:
    if (
        isinstance(actor, User)
        and device.custodian_id == actor.pk
        and access.membership_current_get(user=actor, tenant=device.tenant)
    ):
        return
    access.require(actor, MANAGE, device)


def _order_open(*, device: Device, actor: Any, reason: str) -> WipeOrder:
    order = WipeOrder.objects.filter(device=device, sanitized_at__isnull=True).first()
    if order is not None:
        return order
    order = WipeOrder(
        tenant=device.tenant, device=device, reason=reason[:200], ordered_by=actor if isinstance(actor, User) else None
    )
    order.full_clean()
    order.save()
    audit_event_record(
        event=EventType.DEVICE_WIPE_ORDERED,
        actor=actor,
        target=device,
        system_principal="" if isinstance(actor, User) else "enclave:devices",
        extra={"reason": reason, "order": str(order.public_id)},
    )
    return order


@transaction.atomic
def device_report_lost(*, actor: Any, device: Device, reason: str) -> Device:
    """Report a device lost or stolen: its custodian or an administrator (`tenants.manage_devices`). Its tokens
    are revoked at once, a wipe order opens and a SecurityAlert is raised (a possible breach to assess).
    Records DEVICE_REPORTED_LOST and DEVICE_WIPE_ORDERED."""
    _custodian_or_manager(actor, device)
    reason = _reason(reason, "reported lost")
    device = _locked(device)
    previous = _move(device, Device.Status.LOST)
    device.save(update_fields=["status", "updated_at"])
    security_alert_raise(
        kind="device_lost",
        summary=f"Device “{device.name}” ({device.get_kind_display().lower()}) reported lost",
        event=EventType.DEVICE_REPORTED_LOST,
        actor=actor,
        target=device,
        extra={"reason": reason, "previous_status": previous},
    )
    tokens_revoke(device=device, actor=actor, why="lost")
    _order_open(device=device, actor=actor, reason=f"reported lost: {reason}")
    return device


@transaction.atomic
def device_wipe_order(*, actor: Any, device: Device, reason: str) -> WipeOrder:
    """Order a device wiped (`tenants.manage_devices`; `actor` None: the system, when its custodian leaves).
    The device learns of the order at its next contact and confirms with its token, which then works for
    nothing else. Records DEVICE_WIPE_ORDERED."""
    if actor is not None:
        access.require(actor, MANAGE, device)
    reason = _reason(reason, "to be wiped")
    device = _locked(device)
    _move(device, Device.Status.WIPE_ORDERED)
    device.save(update_fields=["status", "updated_at"])
    return _order_open(device=device, actor=actor, reason=reason)


def _sanitized(
    *,
    order: WipeOrder,
    device: Device,
    actor: Any,
    method: str,
    tool: str,
    verification: str,
    evidence: str,
    at: datetime | None,
) -> WipeOrder:
    if method not in WipeOrder.Method.values:
        raise ValidationError({"method": "The NIST SP 800-88 method: clear, purge or destroy."})
    if not (tool or "").strip():
        raise ValidationError({"tool": "Name the tool or procedure used."})
    if not (verification or "").strip():
        raise ValidationError({"verification": "Say how the result was verified."})
    order.method, order.tool, order.verification = method, tool.strip(), verification.strip()
    order.evidence = (evidence or "").strip()
    order.sanitized_by, order.sanitized_at = actor, at or timezone.now()
    order.full_clean()
    order.save(
        update_fields=["method", "tool", "verification", "evidence", "sanitized_by", "sanitized_at", "updated_at"]
    )
    _move(device, Device.Status.WIPED)
    device.save(update_fields=["status", "updated_at"])
    tokens_revoke(device=device, actor=actor, why="wiped")
    audit_event_record(
        event=EventType.DEVICE_SANITIZED,
        actor=actor,
        target=device,
        extra={"order": str(order.public_id), "method": method, "tool": order.tool, "verification": order.verification},
    )
    return order


@transaction.atomic
def device_wipe_confirm(
    *, token: DeviceToken, method: str, tool: str, verification: str, evidence: str = ""
) -> WipeOrder:
    """The device itself confirms, with its token, that it carried out its open wipe order: the order closes with
    that sanitization record, the device is wiped and its tokens revoked. Records DEVICE_WIPE_CONFIRMED and
    DEVICE_SANITIZED."""
    device = _locked(token.device)
    order = WipeOrder.objects.select_for_update().filter(device=device, sanitized_at__isnull=True).first()
    if order is None or device.status != Device.Status.WIPE_ORDERED:
        raise ValidationError({"order": "This device has no open wipe order."})
    order.confirmed_at, order.confirmed_by = timezone.now(), token.user
    order.save(update_fields=["confirmed_at", "confirmed_by", "updated_at"])
    audit_event_record(
        event=EventType.DEVICE_WIPE_CONFIRMED, actor=token.user, target=device, extra={"order": str(order.public_id)}
    )
    return _sanitized(
        order=order,
        device=device,
        actor=token.user,
        method=method,
        tool=tool,
        verification=verification,
        evidence=evidence,
        at=None,
    )


@transaction.atomic
def device_sanitization_record(
    *,
    actor: Any,
    device: Device,
    method: str,
    tool: str,
    verification: str,
    evidence: str = "",
    performed_at: datetime | None = None,
) -> WipeOrder:
    """Close the device's open wipe order with its sanitization record (`tenants.manage_devices`): for a lost
    device wiped remotely, media destroyed, a device that could not confirm. The device becomes wiped.
    Records DEVICE_SANITIZED."""
    access.require(actor, MANAGE, device)
    device = _locked(device)
    if Device.Status.WIPED not in device.allowed_next():
        raise IllegalTransition(device, Device.Status.WIPED)
    order = WipeOrder.objects.select_for_update().filter(device=device, sanitized_at__isnull=True).first()
    if order is None:
        raise ValidationError({"order": "This device has no open wipe order: order the wipe first."})
    return _sanitized(
        order=order,
        device=device,
        actor=actor,
        method=method,
        tool=tool,
        verification=verification,
        evidence=evidence,
        at=performed_at,
    )


@transaction.atomic
def device_retire(*, actor: Any, device: Device, reason: str) -> Device:
    """Retire a wiped device (`tenants.manage_devices`). Only with its sanitization record: a device that was
    never wiped is a 409 (the life cycle), and so is one whose last wipe order has no record.
    Records DEVICE_RETIRED."""
    access.require(actor, MANAGE, device)
    reason = _reason(reason, "retired")
    device = _locked(device)
    last = WipeOrder.objects.filter(device=device).first()
    if device.status == Device.Status.WIPED and (last is None or last.sanitized_at is None):
        raise ValidationError({"order": "A device is retired only with its sanitization record."})
    _move(device, Device.Status.RETIRED)
    device.save(update_fields=["status", "updated_at"])
    audit_event_record(
        event=EventType.DEVICE_RETIRED,
        actor=actor,
        target=device,
        extra={"reason": reason, "order": str(last.public_id) if last else None},
    )
    return device


def devices_of_departed_custodian(*, tenant: Tenant, user: User, actor: Any = None) -> list[WipeOrder]:
    """A person's membership has ended or they were deactivated: every device in their custody that may still
    hold data gets a wipe order (the system's), and its tokens are revoked, in the caller's transaction."""
    orders = []
    with tenant_scope(tenant):
        for device in Device.objects.filter(custodian=user):
            tokens_revoke(device=device, actor=actor, why="custodian left")
            if Device.Status.WIPE_ORDERED in device.allowed_next():
                device = _locked(device)
                _move(device, Device.Status.WIPE_ORDERED)
                device.save(update_fields=["status", "updated_at"])
                orders.append(_order_open(device=device, actor=None, reason="its custodian left the organisation"))
    return orders


def wipe_orders_overdue_alert() -> int:
    """In the current tenant: raise a SecurityAlert for each wipe order open longer than the policy allows
    (`wipe_order_max_hours`), once per order (a compare-and-set on `overdue_alerted_at`). System job; idempotent.
    Returns how many alerts it raised."""
    tenant = current_tenant()
    policy = device_policy_get(tenant=tenant)
    now = timezone.now()
    cutoff = now - timedelta(hours=policy.wipe_order_max_hours)
    due = WipeOrder.objects.filter(sanitized_at__isnull=True, overdue_alerted_at__isnull=True, created_at__lt=cutoff)
    raised = 0
    for order in due.select_related("device"):
        with transaction.atomic():
            claimed = WipeOrder.objects.filter(pk=order.pk, overdue_alerted_at__isnull=True).update(
                overdue_alerted_at=now
            )
            if claimed != 1:
                continue  # another run took it
            security_alert_raise(
                kind="wipe_order_overdue",
                summary=f"Wipe order for “{order.device.name}” open for over {policy.wipe_order_max_hours} hours",
                event=EventType.DEVICE_WIPE_ORDERED,
                severity="warning",
                target=order.device,
                extra={"order": str(order.public_id), "overdue": True, "ordered_at": order.created_at.isoformat()},
            )
        raised += 1
    return raised
