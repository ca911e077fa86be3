"""Studies written to portable media: a disclosure (HIPAA 164.528), allowed only onto an approved medium that
holds the export grant, and only of studies its writer may see."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.events import EventType
from audit.services import audit_event_record
from devices.models import Device, Grant, MediaExport
from tenants import access


@transaction.atomic
def media_export_record(
    *,
    actor: Any,
    device: Device,
    studies: Sequence[Any],
    participants: Iterable[dict[str, Any]],
    deidentified: bool,
    recipient: str = "",
) -> MediaExport:
    """Record that `studies` (rows of studies.Study, which `actor` may see: `studies.view_study`) were written to
    the portable medium `device`, identified or de-identified. The medium must be approved with the export grant;
    identified data needs `tenants.export_identified`. Records DEVICE_MEDIA_EXPORTED, naming the patients and
    the medium (the disclosure), before anything is written."""
    if not access.may_see_images(actor, device.tenant):
        raise access.Forbidden()
    if not studies:
        raise ValidationError({"studies": "Name at least one study."})
    for study in studies:
        if not access.has_perm(actor, "studies.view_study", study):
            raise access.NotVisible()
    if not deidentified:
        access.require(actor, "tenants.export_identified", device.tenant)
    device = Device.objects.select_for_update().get(pk=device.pk)
    if device.kind != Device.Kind.PORTABLE_MEDIA:
        raise ValidationError({"device": "Studies are written only to portable media registered as such."})
    if device.status != Device.Status.APPROVED or Grant.EXPORT_MEDIA not in device.grants:
        raise access.Forbidden("This medium is not approved for export.", code="device_not_granted")
    patients = {getattr(study, "patient_id", None) for study in studies}
    row = MediaExport(
        tenant=device.tenant,
        device=device,
        actor=actor,
        study_uids=[study.study_instance_uid for study in studies],
        patient_count=len(patients),
        deidentified=deidentified,
        recipient=(recipient or "").strip(),
    )
    row.full_clean()
    row.save()
    audit_event_record(
        event=EventType.DEVICE_MEDIA_EXPORTED,
        actor=actor,
        target=device,
        participants=participants,
        extra={
            "media_export": str(row.public_id),
            "Anonymized": deidentified,
            "studies": len(studies),
            "recipient": row.recipient,
        },
    )
    return row
