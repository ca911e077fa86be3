from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from tenants.models import TenantOwnedModel


class Device(TenantOwnedModel):
    """A machine or medium a tenant allows near its images: modalities and workstations that speak DICOM now;
    mobile devices and portable media in the device workflow to come. Only approved devices are let in."""

    class Kind(models.TextChoices):
        MODALITY = "modality", "Modality or PACS"
        WORKSTATION = "workstation", "Workstation"
        MOBILE = "mobile", "Mobile device"
        PORTABLE_MEDIA = "portable_media", "Portable media"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        REVOKED = "revoked", "Revoked"
        RETIRED = "retired", "Retired"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=120)
    ae_title = models.CharField(max_length=16, blank=True, help_text="DICOM application entity title")
    host = models.GenericIPAddressField(null=True, blank=True, help_text="The address it connects from")
    port = models.PositiveIntegerField(
        null=True, blank=True, help_text="The port its own DICOM listener answers on (a C-MOVE destination)"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
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
        if self.kind in (self.Kind.MODALITY, self.Kind.WORKSTATION) and not self.ae_title:
            raise ValidationError({"ae_title": "A DICOM device needs its AE title."})
        if self.ae_title and not all(32 <= ord(c) < 127 and c != "\\" for c in self.ae_title):
            raise ValidationError({"ae_title": "An AE title is up to 16 plain characters, no backslash."})
