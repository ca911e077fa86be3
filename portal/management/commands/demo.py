"""`manage.py demo`: two tenants and one person per role in each, ready to sign in. Refused in production.

Idempotent: a second run changes nothing and prints the same passwords and TOTP secrets.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.context import audit_context
from devices.models import Device
from devices.services import device_register_approved_by_operator
from devices.services.demo import demo_devices_load
from tenants import services
from tenants.models import Role, User
from tenants.scoping import tenant_scope

DEMO_PASSWORD = "enclave-demo-passphrase"  # noqa: S105 -- demo only; the command refuses production settings
TENANTS = [("north", "North Hospital Group", "NORTH"), ("south", "South Hospital Group", "SOUTH")]
# The demo's approved modalities: a CT that sends to NORTH, an MR that sends to SOUTH, both from this machine.
MODALITIES = {"north": ("DEMO_CT", "Demo CT scanner"), "south": ("DEMO_MR", "Demo MR scanner")}
DEMO_DEVICE_PEOPLE = ("admin", "radiologist", "technologist")
ROLE_NAMES = {
    "admin": Role.TENANT_ADMIN,
    "compliance": Role.COMPLIANCE_OFFICER,
    "radiologist": Role.RADIOLOGIST,
    "technologist": Role.TECHNOLOGIST,
    "referrer": Role.REFERRING_PHYSICIAN,
    "auditor": Role.AUDITOR,
}


class Command(BaseCommand):
    help = "Load the demo: tenants north and south, one user per role named <tenant>-<role>."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.ENCLAVE_ENV == "production":
            raise CommandError("The demo is refused under production settings.")
        rows = []
        with audit_context(system_principal="manage.py demo"), transaction.atomic():
            for slug, name, ae_title in TENANTS:
                tenant = services.tenant_create(slug=slug, name=name, ae_title=ae_title)
                modality_ae, modality_name = MODALITIES[slug]
                with tenant_scope(tenant):
                    device_register_approved_by_operator(
                        kind=Device.Kind.MODALITY,
                        name=modality_name,
                        ae_title=modality_ae,
                        host="127.0.0.1",
                        reason="demo",
                    )
                for short, role in ROLE_NAMES.items():
                    user = self._user(f"{slug}-{short}", tenant_name=name, role_label=Role(role).label)
                    ends_at = None
                    if role == Role.AUDITOR:
                        ends_at = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
                            days=365
                        )
                    if not self._is_member(user, tenant):
                        services.membership_grant_by_operator(
                            tenant=tenant, user=user, role=role, ends_at=ends_at, reason="demo"
                        )
                    device = self._device(user)
                    secret = base64.b32encode(device.bin_key).decode().rstrip("=")
                    rows.append((user.username, secret))
                if slug == "north":  # issue 11: a tablet, a pending request, a lost phone, a retired USB drive
                    with tenant_scope(tenant):
                        demo_devices_load(**{r: User.objects.get(username=f"north-{r}") for r in DEMO_DEVICE_PEOPLE})
        self.stdout.write(f"Demo loaded. Every demo user's password: {DEMO_PASSWORD}")
        self.stdout.write("DICOM: send to AE title NORTH or SOUTH at 127.0.0.1 (DICOM_PORT, default 11112), calling")
        self.stdout.write("as DEMO_CT (north) or DEMO_MR (south), the approved demo modalities.")
        self.stdout.write("Each user signs in with a TOTP code from an authenticator app set up with this secret:")
        for username, secret in rows:
            self.stdout.write(f"  {username:<22} {secret}")

    def _user(self, username: str, *, tenant_name: str, role_label: str) -> User:
        user = User.objects.filter(username__iexact=username).first()
        if user is None:
            user = User(
                username=username,
                email=f"{username}@demo.enclave.invalid",
                first_name="Demo",
                last_name=f"{role_label} ({tenant_name.split()[0]})",
            )
            user.set_password(DEMO_PASSWORD)
            user.save()
        return user

    def _is_member(self, user: User, tenant: Any) -> bool:
        from tenants.access import membership_current_get

        return membership_current_get(user=user, tenant=tenant) is not None

    def _device(self, user: User) -> TOTPDevice:
        device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
        if device is None:
            device = TOTPDevice.objects.create(user=user, name="demo authenticator", confirmed=True)
        return device
