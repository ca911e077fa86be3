"""Writes of the device registry: registration and requests, approval (two people, SECURITY.md C1), the life
cycle (`devices.models.TRANSITIONS`), custody, grants and the tenant's device policy."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record
from devices.models import (
    Attestation,
    CustodyPeriod,
    Device,
    DevicePolicy,
    DeviceToken,
    Grant,
    IllegalTransition,
    attestation_failures,
    certificate_fingerprint_normalised,
    serial_digest_of,
)
from tenants import access
from tenants.models import Tenant, User
from tenants.scoping import current_tenant

MANAGE = "tenants.manage_devices"


def _ae_title_free_check(device: Device) -> None:
    """A clear message for an AE title already in the tenant's registry, in any status (the database constraint
    alone would only say that a constraint is violated)."""
    ae_title = (device.ae_title or "").strip().upper()
    if not ae_title:
        return
    taken = Device.objects.filter(ae_title=ae_title).exclude(pk=device.pk).first()
    if taken is not None:
        raise ValidationError(
            {
                "ae_title": f"The AE title {ae_title} is already registered for “{taken.name}” "
                f"({taken.get_status_display().lower()}). Each device of the organisation needs its own."
            }
        )


def _reason(reason: str, what: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": f"Say why the device is {what}: the reason is kept on the audit trail."})
    return reason


def _member_of(user: Any, tenant: Tenant) -> bool:
    return isinstance(user, User) and access.membership_current_get(user=user, tenant=tenant) is not None


def device_policy_get(*, tenant: Tenant) -> DevicePolicy:
    """The tenant's device policy, made with the defaults on first use. Idempotent."""
    policy = DevicePolicy.objects.filter(tenant=tenant).first()
    if policy is None:
        try:
            with transaction.atomic():
                policy = DevicePolicy.objects.create(tenant=tenant)
        except IntegrityError:  # made by a concurrent request
            policy = DevicePolicy.objects.get(tenant=tenant)
    return policy


POLICY_FIELDS = (
    "require_disk_encryption",
    "require_screen_lock",
    "require_mdm",
    "minimum_os_version",
    "attestation_max_age_hours",
    "token_hours",
    "offline_cache_hours",
    "wipe_order_max_hours",
    "grants_by_kind",
)


@transaction.atomic
def device_policy_update(*, actor: Any, **changes: Any) -> DevicePolicy:
    """Change the current tenant's device policy (`tenants.manage_devices`). Records DEVICE_POLICY_CHANGED with
    the old and new values of what changed. Tokens are re-checked against it at their next refresh."""
    tenant = current_tenant()
    access.require(actor, MANAGE, tenant)
    policy = DevicePolicy.objects.select_for_update().get(pk=device_policy_get(tenant=tenant).pk)
    changed = {}
    for field, value in changes.items():
        if field not in POLICY_FIELDS:
            raise ValidationError({field: "Not a device policy setting."})
        if getattr(policy, field) != value:
            changed[field] = {"from": getattr(policy, field), "to": value}
            setattr(policy, field, value)
    policy.full_clean()
    if changed:
        policy.save(update_fields=[*changed, "updated_at"])
        audit_event_record(
            event=EventType.DEVICE_POLICY_CHANGED, actor=actor, target=policy, extra={"changes": changed}
        )
    return policy


def _attestation_record(*, device: Device, actor: Any, attestation: dict[str, Any]) -> Attestation:
    policy = device_policy_get(tenant=device.tenant)
    failures = attestation_failures(policy, attestation)
    row = Attestation(
        tenant=device.tenant,
        device=device,
        disk_encrypted=attestation.get("disk_encrypted") is True,
        screen_lock=attestation.get("screen_lock") is True,
        mdm_managed=attestation.get("mdm_managed") is True,
        os_version=str(attestation.get("os_version") or "")[:20],
        accepted=not failures,
        failures=failures,
        reported_by=actor if isinstance(actor, User) else None,
    )
    row.full_clean()
    row.save()
    audit_event_record(
        event=EventType.DEVICE_ATTESTED,
        actor=actor,
        target=device,
        extra={"accepted": row.accepted, "failures": failures, "os_version": row.os_version},
    )
    return row


def _custody_start(*, device: Device, custodian: User, actor: Any) -> None:
    now = timezone.now()
    CustodyPeriod.objects.filter(device=device, ended_at__isnull=True).update(ended_at=now)
    period = CustodyPeriod(
        tenant=device.tenant,
        device=device,
        custodian=custodian,
        started_at=now,
        assigned_by=actor if isinstance(actor, User) else None,
    )
    period.full_clean()
    period.save()


@transaction.atomic
def device_register(
    *,
    actor: Any,
    kind: str,
    name: str,
    ae_title: str = "",
    host: str | None = None,
    port: int | None = None,
    custodian: User | None = None,
    serial: str = "",
    certificate_sha256: str = "",
) -> Device:
    """Register a device in the current tenant, pending approval (`tenants.manage_devices`). Its AE title must be
    new to the tenant's registry, whatever the other device's status; its custodian, if any, a current member.
    The serial is kept only as a keyed hash; `certificate_sha256`, the fingerprint of the TLS client certificate
    a DICOM device must present (see `device_certificate_pin`). Records DEVICE_REGISTERED (and the custody)."""
    tenant = current_tenant()
    access.require(actor, MANAGE, tenant)
    return _device_create(
        actor=actor,
        tenant=tenant,
        kind=kind,
        name=name,
        ae_title=ae_title,
        host=host,
        port=port,
        custodian=custodian,
        serial=serial,
        certificate_sha256=certificate_sha256,
    )


@transaction.atomic
def device_request(
    *, actor: Any, kind: str, name: str, serial: str = "", attestation: dict[str, Any] | None = None
) -> Device:
    """A member asks for a device in their own custody (a tablet, a workstation at home), with what it attests
    now. Any current member may ask; an administrator other than them approves. Records DEVICE_REGISTERED."""
    tenant = current_tenant()
    if not _member_of(actor, tenant):
        raise access.Forbidden()
    if kind not in (Device.Kind.MOBILE, Device.Kind.WORKSTATION, Device.Kind.PORTABLE_MEDIA):
        raise ValidationError({"kind": "Members request mobile devices, workstations and portable media."})
    device = _device_create(actor=actor, tenant=tenant, kind=kind, name=name, custodian=actor, serial=serial)
    if attestation is not None:
        _attestation_record(device=device, actor=actor, attestation=attestation)
    return device


def _device_create(
    *,
    actor: Any,
    tenant: Tenant,
    kind: str,
    name: str,
    ae_title: str = "",
    host: str | None = None,
    port: int | None = None,
    custodian: User | None = None,
    serial: str = "",
    certificate_sha256: str = "",
) -> Device:
    if custodian is not None and not _member_of(custodian, tenant):
        raise ValidationError({"custodian": "The custodian must be a current member of the organisation."})
    device = Device(
        tenant=tenant,
        kind=kind,
        name=name,
        ae_title=ae_title,
        host=host or None,
        port=port,
        requested_by=actor if isinstance(actor, User) else None,
        custodian=custodian,
        serial_digest=serial_digest_of(serial),
        certificate_sha256=certificate_fingerprint_normalised(certificate_sha256),
    )
    _ae_title_free_check(device)
    device.full_clean()
    try:
        with transaction.atomic():
            device.save()
    except IntegrityError:  # registered by someone else between the check and the insert
        _ae_title_free_check(device)
        raise
    audit_event_record(
        event=EventType.DEVICE_REGISTERED,
        actor=actor,
        target=device,
        extra={
            "kind": kind,
            "ae_title": device.ae_title,
            "host": host,
            "port": port,
            "custodian": custodian.username if custodian else None,
            **({"certificate_sha256": device.certificate_sha256} if device.certificate_sha256 else {}),
        },
    )
    if custodian is not None:
        _custody_start(device=device, custodian=custodian, actor=actor)
    return device


def _locked(device: Device) -> Device:
    return Device.objects.select_for_update().get(pk=device.pk)


def _move(device: Device, to: str) -> str:
    """Check that the life cycle allows `device` -> `to` (else `IllegalTransition`, a 409) and set it."""
    if to not in device.allowed_next():
        raise IllegalTransition(device, to)
    previous = device.status
    device.status = to
    return previous


def tokens_revoke(*, device: Device, actor: Any, why: str) -> int:
    """Revoke every live token of `device` at once. Records DEVICE_TOKENS_REVOKED when there were any."""
    count = DeviceToken.objects.filter(device=device, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if count:
        audit_event_record(
            event=EventType.DEVICE_TOKENS_REVOKED, actor=actor, target=device, extra={"count": count, "why": why}
        )
    return count


def _default_grants(device: Device, policy: DevicePolicy) -> list[str]:
    allowed = policy.grants_for(device.kind)
    first: str = {
        Device.Kind.MOBILE: Grant.VIEW,
        Device.Kind.WORKSTATION: Grant.VIEW,
        Device.Kind.PORTABLE_MEDIA: Grant.EXPORT_MEDIA,
        Device.Kind.MODALITY: Grant.SEND_DICOM,
    }[Device.Kind(device.kind)]
    return [first] if first in allowed else []


def _grants_check(device: Device, grants: list[str], policy: DevicePolicy) -> list[str]:
    allowed = policy.grants_for(device.kind)
    refused = [g for g in grants if g not in allowed]
    if refused:
        raise ValidationError(
            {"grants": f"The policy does not let a {device.get_kind_display().lower()} receive: {', '.join(refused)}."}
        )
    return sorted(set(grants))


@transaction.atomic
def device_approve(*, actor: Any, device: Device, grants: list[str] | None = None, reason: str = "") -> Device:
    """Approve a requested device (`tenants.manage_devices`), by someone other than who requested it, or reinstate
    a suspended one. A mobile device or workstation must have attested what the policy asks. Its grants are
    `grants` (checked against the policy's grants for its kind), or the first of its kind (view, export to media,
    send by DICOM). Idempotent for an approved device. Records DEVICE_APPROVED or DEVICE_REINSTATED."""
    access.require(actor, MANAGE, device)
    device = _locked(device)
    if device.status == Device.Status.APPROVED:
        return device
    policy = device_policy_get(tenant=device.tenant)
    if device.status == Device.Status.SUSPENDED:
        _move(device, Device.Status.APPROVED)
        device.save(update_fields=["status", "updated_at"])
        audit_event_record(event=EventType.DEVICE_REINSTATED, actor=actor, target=device, extra={"reason": reason})
        return device
    _move(device, Device.Status.APPROVED)
    if device.requested_by_id == getattr(actor, "pk", None):
        raise access.Forbidden(
            "A device is approved by another administrator than the one who registered it.", code="two_person_rule"
        )
    if device.uses_tokens:
        latest = Attestation.objects.filter(device=device).first()
        if latest is None or not latest.accepted:
            why = "; ".join(latest.failures) if latest is not None else "it has attested nothing yet"
            raise ValidationError({"attestation": f"The device does not meet the policy: {why}."})
    device.grants = _grants_check(device, grants, policy) if grants is not None else _default_grants(device, policy)
    device.approved_by, device.approved_at = actor, timezone.now()
    device.save(update_fields=["status", "approved_by", "approved_at", "grants", "updated_at"])
    audit_event_record(event=EventType.DEVICE_APPROVED, actor=actor, target=device, extra={"grants": device.grants})
    return device


@transaction.atomic
def device_grants_set(*, actor: Any, device: Device, grants: list[str]) -> Device:
    """Set what `device` may be used for (`tenants.manage_devices`), within the policy's grants for its kind.
    Records DEVICE_GRANTS_CHANGED."""
    access.require(actor, MANAGE, device)
    device = _locked(device)
    new = _grants_check(device, grants, device_policy_get(tenant=device.tenant))
    if new != sorted(device.grants):
        previous = sorted(device.grants)
        device.grants = new
        device.save(update_fields=["grants", "updated_at"])
        audit_event_record(
            event=EventType.DEVICE_GRANTS_CHANGED, actor=actor, target=device, extra={"from": previous, "to": new}
        )
    return device


@transaction.atomic
def device_suspend(*, actor: Any, device: Device, reason: str) -> Device:
    """Suspend an approved device (`tenants.manage_devices`): its tokens stop working at once (they are revoked;
    a reinstated device enrols again) and its DICOM associations are refused at their next request.
    Records DEVICE_SUSPENDED."""
    access.require(actor, MANAGE, device)
    reason = _reason(reason, "suspended")
    device = _locked(device)
    previous = _move(device, Device.Status.SUSPENDED)
    device.save(update_fields=["status", "updated_at"])
    audit_event_record(
        event=EventType.DEVICE_SUSPENDED,
        actor=actor,
        target=device,
        extra={"reason": reason, "previous_status": previous},
    )
    tokens_revoke(device=device, actor=actor, why="suspended")
    return device


@transaction.atomic
def device_revoke(*, actor: Any, device: Device, reason: str) -> Device:
    """Withdraw a requested or approved device (`tenants.manage_devices`): its next DICOM association is refused.
    One administrator is enough, unlike approval, so that a compromised device is shut out at once.
    Idempotent for a revoked device. Records DEVICE_REVOKED with the reason and the status it had."""
    access.require(actor, MANAGE, device)
    reason = _reason(reason, "revoked")
    device = _locked(device)
    if device.status == Device.Status.REVOKED:
        return device
    previous = _move(device, Device.Status.REVOKED)
    device.save(update_fields=["status", "updated_at"])
    audit_event_record(
        event=EventType.DEVICE_REVOKED,
        actor=actor,
        target=device,
        extra={"reason": reason, "previous_status": previous, "ae_title": device.ae_title},
    )
    tokens_revoke(device=device, actor=actor, why="revoked")
    return device


@transaction.atomic
def device_custodian_change(*, actor: Any, device: Device, custodian: User, reason: str) -> Device:
    """Give a device to another custodian (`tenants.manage_devices`). A device that has had a custodian must have
    been wiped first (a sanitization record: HIPAA 164.310(d)(2)(ii), re-use); it then goes back to "requested"
    for its new custodian, to be approved again by another administrator. Records DEVICE_CUSTODY_CHANGED."""
    access.require(actor, MANAGE, device)
    reason = _reason(reason, "given to someone else")
    device = _locked(device)
    if not _member_of(custodian, device.tenant):
        raise ValidationError({"custodian": "The custodian must be a current member of the organisation."})
    previous = device.custodian
    if previous is not None:
        if device.status != Device.Status.WIPED:
            raise ValidationError(
                {"custodian": "A device goes to another custodian only once it is wiped, with its sanitization record."}
            )
        device.status = Device.Status.PENDING
        device.requested_by, device.approved_by, device.approved_at, device.grants = actor, None, None, []
    device.custodian = custodian
    device.save(
        update_fields=["custodian", "status", "requested_by", "approved_by", "approved_at", "grants", "updated_at"]
    )
    _custody_start(device=device, custodian=custodian, actor=actor)
    audit_event_record(
        event=EventType.DEVICE_CUSTODY_CHANGED,
        actor=actor,
        target=device,
        extra={"reason": reason, "from": previous.username if previous else None, "to": custodian.username},
    )
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
    device = Device(
        tenant=tenant,
        kind=kind,
        name=name,
        ae_title=ae_title,
        host=host or None,
        status=Device.Status.APPROVED,
        approved_at=timezone.now(),
    )
    device.full_clean()
    device.save()
    for event in (EventType.DEVICE_REGISTERED, EventType.DEVICE_APPROVED):
        audit_event_record(
            event=event,
            actor=operator,
            target=device,
            system_principal="enclave:platform",
            extra={"reason": reason, "ae_title": device.ae_title, "host": host},
        )
    return device


@transaction.atomic
def device_certificate_pin(*, actor: Any, device: Device, sha256: str) -> Device:
    """Register the SHA-256 fingerprint of the TLS client certificate a DICOM device must present (SECURITY.md A8,
    IHE ATNA node authentication), or clear it with "" (then any certificate the listener's CA signed will do).
    Needs `tenants.manage_devices`; the device must be a DICOM peer (it has an AE title). Idempotent. Records
    DEVICE_CERTIFICATE_PINNED with the old and new fingerprints."""
    access.require(actor, MANAGE, device.tenant)
    if not device.ae_title:
        raise ValidationError({"certificate_sha256": "Only a DICOM device (with an AE title) presents a certificate."})
    old = device.certificate_sha256
    device.certificate_sha256 = certificate_fingerprint_normalised(sha256)  # before the length check of full_clean
    device.full_clean()
    if device.certificate_sha256 == old:
        return device
    device.save(update_fields=["certificate_sha256", "updated_at"])
    audit_event_record(
        event=EventType.DEVICE_CERTIFICATE_PINNED,
        actor=actor,
        target=device,
        extra={"ae_title": device.ae_title, "old_sha256": old, "new_sha256": device.certificate_sha256},
    )
    return device
