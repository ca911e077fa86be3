"""An admitted DICOM association, shared by the storage door (studies.net.scp) and query/retrieve (studies.net.qr)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from devices.models import Device
from tenants.models import Tenant


@dataclass(frozen=True)
class Peer:
    """An admitted association: who is sending, into which tenant, under which batch."""

    tenant: Tenant
    device: Device
    calling_ae: str
    called_ae: str
    address: str
    batch: uuid.UUID

    @property
    def principal(self) -> str:
        """The system principal of the device's events on the audit trail."""
        return f"dicom:{self.calling_ae}"
