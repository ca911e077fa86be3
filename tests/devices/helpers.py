"""Small helpers of the device registry tests: devices made and read through the real services and selectors."""

from __future__ import annotations

from devices import services
from devices.models import Device
from tenants.models import Tenant, User
from tenants.scoping import tenant_scope


def register(tenant: Tenant, actor: User, *, ae_title: str = "CT_ONE", host: str | None = "10.0.0.5",
             name: str | None = None, kind: str = Device.Kind.MODALITY) -> Device:  # fmt: skip
    with tenant_scope(tenant):
        return services.device_register(
            actor=actor, kind=kind, name=name or f"Scanner {ae_title}", ae_title=ae_title, host=host
        )


def approve(tenant: Tenant, actor: User, device: Device) -> Device:
    with tenant_scope(tenant):
        return services.device_approve(actor=actor, device=device)


def revoke(tenant: Tenant, actor: User, device: Device, reason: str = "stolen") -> Device:
    with tenant_scope(tenant):
        return services.device_revoke(actor=actor, device=device, reason=reason)


def reload(tenant: Tenant, device: Device) -> Device:
    with tenant_scope(tenant):
        return Device.objects.get(pk=device.pk)


def device_count(tenant: Tenant) -> int:
    with tenant_scope(tenant):
        return Device.objects.count()
