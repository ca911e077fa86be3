"""The device policy, registered with tenants.access (which decides): what a DICOM device may do on the listener.

An APPROVED modality or workstation of the current tenant may send (C-STORE) and read the tenant's whole archive
(C-FIND, C-GET, C-MOVE: what a PACS workstation or a modality fetching priors needs); nothing of any other tenant,
and nothing once pending, revoked or retired. Reads the device's row afresh each time it is asked: on every
C-FIND, C-GET and C-MOVE, and for C-STORE once per DICOM_DEVICE_RECHECK_SECONDS of an association (studies.net.scp).
"""

from __future__ import annotations

from typing import Any

from devices.models import Device
from tenants.access import DEVICE_READ, DEVICE_STORE
from tenants.scoping import current_tenant

DICOM_KINDS = (Device.Kind.MODALITY, Device.Kind.WORKSTATION)


def device_policy(device: Any, action: str) -> bool:
    if not isinstance(device, Device) or action not in (DEVICE_STORE, DEVICE_READ):
        return False
    if device.tenant_id != current_tenant().pk:
        return False
    return Device.objects.filter(pk=device.pk, status=Device.Status.APPROVED, kind__in=DICOM_KINDS).exists()
