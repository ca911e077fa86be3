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
from training import services as training_services

DEMO_PASSWORD = "enclave-demo-passphrase"  # noqa: S105 -- demo only; the command refuses production settings
TENANTS = [("north", "North Hospital Group", "NORTH"), ("south", "South Hospital Group", "SOUTH")]
# The demo's approved modalities: a CT that sends to NORTH, an MR that sends to SOUTH, both from this machine.
MODALITIES = {"north": ("DEMO_CT", "Demo CT scanner"), "south": ("DEMO_MR", "Demo MR scanner")}
OPERATOR = "ops"
DEMO_DEVICE_PEOPLE = ("admin", "radiologist", "technologist")
ROLE_NAMES = {
    "admin": Role.TENANT_ADMIN,
    "compliance": Role.COMPLIANCE_OFFICER,
    "radiologist": Role.RADIOLOGIST,
    "technologist": Role.TECHNOLOGIST,
    "referrer": Role.REFERRING_PHYSICIAN,
    "auditor": Role.AUDITOR,
}
CLINICIANS = (Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.REFERRING_PHYSICIAN)
# Training: HIPAA courses block every role; radiation safety and break-glass procedure only warn, for clinicians.
REQUIREMENTS = [
    ("hipaa-security-awareness", tuple(Role.values), True),
    ("hipaa-privacy", tuple(Role.values), True),
    ("radiation-safety", (Role.RADIOLOGIST, Role.TECHNOLOGIST), False),
    ("break-glass-procedure", CLINICIANS, False),
]
LAPSED_USER, LAPSED_COURSE = "north-referrer", "hipaa-security-awareness"  # lapsed last week: shows the gate
PENDING_USER, PENDING_COURSE = "north-technologist", "device-handling"  # waits in north's approval queue
DEMO_CERTIFICATE = b"%PDF-1.4\n% Enclave demo certificate: not a real course\n%%EOF\n"


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
                with tenant_scope(tenant):
                    self._training(slug)
                if slug == "north":  # issue 11: a tablet, a pending request, a lost phone, a retired USB drive
                    with tenant_scope(tenant):
                        demo_devices_load(**{r: User.objects.get(username=f"north-{r}") for r in DEMO_DEVICE_PEOPLE})
            operator = self._operator()
            rows.append((operator.username, base64.b32encode(self._device(operator).bin_key).decode().rstrip("=")))
        self.stdout.write(f"Demo loaded. Every demo user's password: {DEMO_PASSWORD}")
        self.stdout.write("DICOM: send to AE title NORTH or SOUTH at 127.0.0.1 (DICOM_PORT, default 11112), calling")
        self.stdout.write("as DEMO_CT (north) or DEMO_MR (south), the approved demo modalities.")
        self.stdout.write("Each user signs in with a TOTP code from an authenticator app set up with this secret:")
        for username, secret in rows:
            self.stdout.write(f"  {username:<22} {secret}")
        self.stdout.write(f"`{OPERATOR}` is a platform operator (no tenant): the operators' admin at /ops/.")
        self.stdout.write(
            f"Training: every demo user's required training is current, except {LAPSED_USER}, whose HIPAA Security "
            "Awareness lapsed last week: the training gate refuses them patient data (try /dicomweb/north/studies). "
            f"{PENDING_USER}'s self-reported Device Handling waits for north-compliance's approval."
        )

    def _operator(self) -> User:
        """The platform operator of the demo: staff with every admin permission, member of no tenant."""
        user = User.objects.filter(username__iexact=OPERATOR).first()
        if user is None:
            user = User(
                username=OPERATOR,
                email=f"{OPERATOR}@demo.enclave.invalid",
                first_name="Demo",
                last_name="Platform operator",
                is_staff=True,
                is_superuser=True,
            )
            user.set_password(DEMO_PASSWORD)
            user.save()
        return user

    def _training(self, slug: str) -> None:
        """Adopt the catalogue, set the requirements, and give each member current training (idempotent)."""
        from tenants.models import Membership

        courses = training_services.catalogue_adopt_by_operator(reason="demo")
        for code, roles, blocking in REQUIREMENTS:
            for role in roles:
                training_services.requirement_set_by_operator(
                    course=courses[code], role=role, blocking=blocking, grace_days=0, reason="demo"
                )
        today = timezone.localdate()
        for membership in Membership.objects.filter(status=Membership.Status.ACTIVE).select_related("user"):
            user = membership.user
            for code, roles, _ in REQUIREMENTS:
                if membership.role not in roles:
                    continue
                course = courses[code]
                expires_on = course.expiry_for(today - timedelta(days=60))
                if (user.username, code) == (LAPSED_USER, LAPSED_COURSE):
                    expires_on = today - timedelta(days=7)
                training_services.completion_record_by_operator(
                    user=user, course=course, completed_on=expires_on - timedelta(days=365), expires_on=expires_on,
                    evidence=DEMO_CERTIFICATE if course.evidence_required else None, reason="demo",
                )  # fmt: skip
            if user.username == PENDING_USER:
                training_services.completion_record_by_operator(
                    user=user, course=courses[PENDING_COURSE], completed_on=today - timedelta(days=3),
                    expires_on=courses[PENDING_COURSE].expiry_for(today - timedelta(days=3)), pending=True,
                    reason="demo: self-reported, waiting for approval",
                )  # fmt: skip

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
