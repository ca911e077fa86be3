"""`manage.py demo` leaves north with the issue's devices: an approved view-only tablet in the radiologist's
custody, a pending request from the technologist, a lost phone with an open wipe order, and a retired USB drive
with its sanitization record. A second run changes nothing."""

from __future__ import annotations

from django.core.management import call_command

from devices.models import Device, WipeOrder
from tenants.models import Tenant
from tenants.scoping import tenant_scope


def test_demo_loads_the_north_devices_once(db, capsys):
    call_command("demo")
    call_command("demo")

    with tenant_scope(Tenant.objects.get(slug="north")):
        devices = {d.name: d for d in Device.objects.select_related("custodian")}
        tablet = devices["Reading tablet (demo)"]
        assert (tablet.status, tablet.grants, tablet.custodian.username) == ("approved", ["view"], "north-radiologist")
        pending = devices["Technologist tablet (demo)"]
        assert (pending.status, pending.custodian.username) == ("pending", "north-technologist")
        phone = devices["On-call phone (demo)"]
        assert phone.status == "lost"
        assert WipeOrder.objects.get(device=phone).is_open
        usb = devices["USB drive (demo)"]
        assert usb.status == "retired"
        assert WipeOrder.objects.get(device=usb).method == "destroy"
        assert len([d for d in devices if d.endswith("(demo)")]) == 4
