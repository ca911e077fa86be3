from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.crypto import salted_hmac

from tenants.models import TenantOwnedModel

# The serial number is a device identifier (HIPAA's 18 identifiers include them): stored only as a keyed hash, so
# the register can find a device by its exact serial but the database cannot tell anyone what the serial is.
SERIAL_HMAC_SALT = "enclave.devices.serial"


def serial_digest_of(serial: str) -> str:
    """The keyed hash (HMAC-SHA256, key derived from SECRET_KEY) of a serial, normalised (trimmed, upper case)."""
    normalised = "".join((serial or "").split()).upper()
    if not normalised:
        return ""
    return salted_hmac(SERIAL_HMAC_SALT, normalised, algorithm="sha256").hexdigest()


class Grant(models.TextChoices):
    """What a device may be used for, on top of what its person may do (a grant never widens that)."""

    VIEW = "view", "View images"
    DOWNLOAD = "download", "Download DICOM files"
    OFFLINE_CACHE = "offline_cache", "Keep an offline cache"
    EXPORT_MEDIA = "export_media", "Export to portable media"
    SEND_DICOM = "send_dicom", "Send by DICOM"


def certificate_fingerprint_normalised(text: str) -> str:
    """A fingerprint as written by openssl (`AB:CD:...`) or plain hex, as lower-case hex without separators."""
    return (text or "").replace(":", "").replace(" ", "").strip().lower()


class Device(TenantOwnedModel):
    """A machine or medium a tenant allows near its images: modalities and workstations that speak DICOM, mobile
    devices and workstations that use the API with a device-bound token, portable media that studies are written
    to. Only approved devices are let in; the life cycle is `TRANSITIONS`."""

    class Kind(models.TextChoices):
        MODALITY = "modality", "Modality or PACS"
        WORKSTATION = "workstation", "Workstation"
        MOBILE = "mobile", "Mobile device"
        PORTABLE_MEDIA = "portable_media", "Portable media"

    class Status(models.TextChoices):
        PENDING = "pending", "Requested"
        APPROVED = "approved", "Approved"
        SUSPENDED = "suspended", "Suspended"
        LOST = "lost", "Lost"
        WIPE_ORDERED = "wipe_ordered", "Wipe ordered"
        WIPED = "wiped", "Wiped"
        RETIRED = "retired", "Retired"
        # Kept for the DICOM registry's "revoke" (a request refused, or a modality withdrawn at once).
        REVOKED = "revoked", "Revoked"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=120)
    ae_title = models.CharField(max_length=16, blank=True, help_text="DICOM application entity title")
    host = models.GenericIPAddressField(null=True, blank=True, help_text="The address it connects from")
    port = models.PositiveIntegerField(
        null=True, blank=True, help_text="The port its own DICOM listener answers on (a C-MOVE destination)"
    )
    certificate_sha256 = models.CharField(
        max_length=64,
        blank=True,
        help_text="SHA-256 of the DER certificate a DICOM peer must present over TLS (hex); empty: any the CA signed",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    custodian = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    serial_digest = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    grants = ArrayField(models.CharField(max_length=20, choices=Grant.choices), default=list, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "ae_title"], condition=~models.Q(ae_title=""), name="devices_device_tenant_ae_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title or self.kind})"

    def clean(self) -> None:
        super().clean()
        self.ae_title = self.ae_title.strip().upper()
        if self.kind in (self.Kind.MODALITY, self.Kind.WORKSTATION) and not self.ae_title and self.host:
            raise ValidationError({"ae_title": "A DICOM device needs its AE title."})
        if self.kind == self.Kind.MODALITY and not self.ae_title:
            raise ValidationError({"ae_title": "A DICOM device needs its AE title."})
        if self.ae_title and not all(32 <= ord(c) < 127 and c != "\\" for c in self.ae_title):
            raise ValidationError({"ae_title": "An AE title is up to 16 plain characters, no backslash."})
        self.certificate_sha256 = certificate_fingerprint_normalised(self.certificate_sha256)
        if self.certificate_sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.certificate_sha256):
            raise ValidationError({"certificate_sha256": "A SHA-256 fingerprint is 64 hexadecimal digits."})

    @property
    def uses_tokens(self) -> bool:
        """Mobile devices, and workstations registered without an AE title (not DICOM peers), use the API with a
        device-bound token, and attest before approval. A DICOM workstation is let in by the listener's rules."""
        return self.kind == self.Kind.MOBILE or (self.kind == self.Kind.WORKSTATION and not self.ae_title)

    def allowed_next(self) -> list[str]:
        return list(TRANSITIONS.get(self.status, ()))


S = Device.Status
# The life cycle (issue 11): requested -> approved -> (suspended <-> approved) -> lost or wipe ordered -> wiped ->
# retired; a wiped device may be re-used (requested again for a new custodian). "revoked" is the DICOM registry's
# withdrawal, which may still be wiped and retired. Nothing else.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    S.PENDING: (S.APPROVED, S.REVOKED),
    S.APPROVED: (S.SUSPENDED, S.LOST, S.WIPE_ORDERED, S.REVOKED),
    S.SUSPENDED: (S.APPROVED, S.LOST, S.WIPE_ORDERED),
    S.LOST: (S.WIPED,),
    S.WIPE_ORDERED: (S.WIPED,),
    S.WIPED: (S.RETIRED, S.PENDING),  # re-use: a new custodian, approved again
    S.REVOKED: (S.WIPE_ORDERED,),
    S.RETIRED: (),
}


class IllegalTransition(Exception):
    """A life-cycle step the device's state does not allow: a 409 naming the allowed next states."""

    problem_status = 409

    def __init__(self, device: Device, wanted: str) -> None:
        self.allowed = device.allowed_next()
        allowed = ", ".join(self.allowed) or "none (it is retired)"
        super().__init__(f"A {device.get_status_display().lower()} device cannot become {wanted}. Allowed: {allowed}.")
        self.code = "illegal_transition"


class DevicePolicy(TenantOwnedModel):
    """What a tenant asks of its token devices: attestations before approval, at enrolment and at every token
    refresh; how long an offline cache may live; which grants each kind may receive. One row per tenant (made on
    first use with these defaults)."""

    require_disk_encryption = models.BooleanField(default=True)
    require_screen_lock = models.BooleanField(default=True)
    require_mdm = models.BooleanField(default=False)
    minimum_os_version = models.CharField(max_length=20, blank=True, default="")
    attestation_max_age_hours = models.PositiveIntegerField(default=24)
    token_hours = models.PositiveIntegerField(default=24)
    offline_cache_hours = models.PositiveIntegerField(default=72)
    wipe_order_max_hours = models.PositiveIntegerField(default=72, help_text="An order open longer raises an alert.")
    grants_by_kind = models.JSONField(default=dict, blank=True)

    DEFAULT_GRANTS_BY_KIND: dict[str, list[str]] = {
        Device.Kind.MOBILE: [Grant.VIEW, Grant.OFFLINE_CACHE],
        Device.Kind.WORKSTATION: [Grant.VIEW, Grant.DOWNLOAD, Grant.OFFLINE_CACHE, Grant.SEND_DICOM],
        Device.Kind.PORTABLE_MEDIA: [Grant.EXPORT_MEDIA],
        Device.Kind.MODALITY: [Grant.SEND_DICOM],
    }

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant"], name="devices_devicepolicy_one_per_tenant")]

    def grants_for(self, kind: str) -> list[str]:
        table = self.grants_by_kind or self.DEFAULT_GRANTS_BY_KIND
        return [str(g) for g in table.get(kind, [])]

    def clean(self) -> None:
        super().clean()
        table = self.grants_by_kind or {}
        if not isinstance(table, dict):
            raise ValidationError({"grants_by_kind": "A mapping of device kind to grants."})
        for kind, grants in table.items():
            if kind not in Device.Kind.values or not isinstance(grants, list):
                raise ValidationError({"grants_by_kind": f"Unknown device kind {kind!r}."})
            unknown = [g for g in grants if g not in Grant.values]
            if unknown:
                raise ValidationError({"grants_by_kind": f"Unknown grants: {', '.join(map(str, unknown))}."})
        if self.minimum_os_version and not _version(self.minimum_os_version):
            raise ValidationError({"minimum_os_version": "A version such as 17.2."})


def _version(text: str) -> tuple[int, ...]:
    parts = (text or "").strip().split(".")
    try:
        return tuple(int(p) for p in parts if p != "")
    except ValueError:
        return ()


def attestation_failures(policy: DevicePolicy, attestation: dict[str, Any]) -> list[str]:
    """What `attestation` (disk_encrypted, screen_lock, mdm_managed, os_version) lacks under `policy`."""
    failures = []
    if policy.require_disk_encryption and attestation.get("disk_encrypted") is not True:
        failures.append("disk encryption is required")
    if policy.require_screen_lock and attestation.get("screen_lock") is not True:
        failures.append("a screen lock is required")
    if policy.require_mdm and attestation.get("mdm_managed") is not True:
        failures.append("management by the MDM is required")
    if policy.minimum_os_version:
        reported = _version(str(attestation.get("os_version") or ""))
        if not reported or reported < _version(policy.minimum_os_version):
            failures.append(f"the operating system must be version {policy.minimum_os_version} or later")
    return failures


class Attestation(TenantOwnedModel):
    """What a device said about itself, when, and whether the tenant's policy accepted it."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="attestations")
    disk_encrypted = models.BooleanField()
    screen_lock = models.BooleanField()
    mdm_managed = models.BooleanField()
    os_version = models.CharField(max_length=20, blank=True)
    accepted = models.BooleanField()
    failures = models.JSONField(default=list, blank=True)
    reported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]


class CustodyPeriod(TenantOwnedModel):
    """Who held a device, from when to when (HIPAA 164.310(d)(2)(iii): accountability of hardware and media)."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="custody")
    custodian = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-started_at", "-pk"]


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


ENROLMENT_MINUTES = 15
DEVICE_TOKEN_PREFIX = "encd_"  # noqa: S105 -- markers for secret scanners, not secrets
ENROLMENT_CODE_PREFIX = "ence_"


class EnrolmentCode(TenantOwnedModel):
    """A one-time code (shown once, 15 minutes) with which a device obtains its token, bound to the custodian."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="enrolment_codes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    issued_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    digest_of = staticmethod(_digest)

    def is_usable(self) -> bool:
        return self.used_at is None and self.expires_at > timezone.now()

    @staticmethod
    def expiry() -> Any:
        return timezone.now() + timedelta(minutes=ENROLMENT_MINUTES)


class DeviceToken(TenantOwnedModel):
    """A bearer token bound to one person, one device and one tenant. Works only while the device is approved,
    the person is its custodian and a current member, and the device's attestation is current."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    expires_at = models.DateTimeField()
    attested_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    digest_of = staticmethod(_digest)

    class Meta:
        ordering = ["-created_at"]


class WipeOrder(TenantOwnedModel):
    """An order to wipe a device: issued by an administrator, or automatically when the device is reported lost
    or its custodian leaves. The device learns of it at its next contact and confirms; the order closes with a
    sanitization record (NIST SP 800-88 r1: clear, purge or destroy; tool; verification; who; when)."""

    class Method(models.TextChoices):
        CLEAR = "clear", "Clear"
        PURGE = "purge", "Purge"
        DESTROY = "destroy", "Destroy"

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="wipe_orders")
    reason = models.CharField(max_length=200)
    ordered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    device_notified_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    method = models.CharField(max_length=10, choices=Method.choices, blank=True)
    tool = models.CharField(max_length=200, blank=True)
    verification = models.CharField(max_length=300, blank=True)
    evidence = models.TextField(blank=True)
    sanitized_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    sanitized_at = models.DateTimeField(null=True, blank=True)
    overdue_alerted_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-pk"]

    @property
    def is_open(self) -> bool:
        return self.sanitized_at is None


class MediaExport(TenantOwnedModel):
    """Studies written to a portable medium: what, by whom, identified or de-identified. A disclosure."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="media_exports")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    study_uids = models.JSONField(default=list)
    patient_count = models.PositiveIntegerField(default=0)
    deidentified = models.BooleanField()
    recipient = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
