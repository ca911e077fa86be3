"""The demo's devices (`manage.py demo`), made through the real services so that each step is on the trail."""

from __future__ import annotations

from devices.models import Device
from devices.services.registry import device_approve, device_request
from devices.services.wipes import device_report_lost, device_retire, device_sanitization_record, device_wipe_order
from tenants.models import User

GOOD = {"disk_encrypted": True, "screen_lock": True, "mdm_managed": True, "os_version": "17.4"}


def demo_devices_load(*, admin: User, radiologist: User, technologist: User) -> None:
    """In the current tenant: an approved tablet in the radiologist's custody with a view-only grant, a pending
    request from the technologist, a lost phone with an open wipe order, and a retired USB drive with its
    sanitization record. Idempotent (by device name)."""
    if Device.objects.filter(name="Reading tablet (demo)").exists():
        return
    tablet = device_request(
        actor=radiologist,
        kind=Device.Kind.MOBILE,
        name="Reading tablet (demo)",
        serial="DEMO-TAB-0001",
        attestation=GOOD,
    )
    device_approve(actor=admin, device=tablet, grants=["view"])
    device_request(actor=technologist, kind=Device.Kind.MOBILE, name="Technologist tablet (demo)", attestation=GOOD)
    phone = device_request(actor=technologist, kind=Device.Kind.MOBILE, name="On-call phone (demo)", attestation=GOOD)
    device_approve(actor=admin, device=phone, grants=["view"])
    device_report_lost(actor=technologist, device=phone, reason="left in a taxi (demo)")
    usb = device_request(actor=radiologist, kind=Device.Kind.PORTABLE_MEDIA, name="USB drive (demo)")
    device_approve(actor=admin, device=usb)
    device_wipe_order(actor=admin, device=usb, reason="end of teaching file project (demo)")
    device_sanitization_record(
        actor=admin,
        device=usb,
        method="destroy",
        tool="cross-cut shredder",
        verification="visual inspection of particles",
        evidence="certificate DEMO-1",
    )
    device_retire(actor=admin, device=usb, reason="destroyed (demo)")
