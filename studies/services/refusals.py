"""The one record of a refusal at a door: C-STORE, STOW-RS and the browser upload call `ingest_refusal_record`
when they turn an object away before (or instead of) the pipeline, so every refusal has the same audit shape.

Shape: INGEST_REJECTED, outcome 4 (minor failure) with the reason (for people, no patient data), the actor (a
person) or the system principal (`dicom:<calling AE title>` for a device), and `extra` =
{"source": upload|stowrs|cstore, "failure": a failure class for machines, "batch", "door": what the door knows
(part number, size, UIDs it read), "ingest_item": the item's public id when the door kept one}. A refusal that
is a security matter (a revoked or unknown device) also opens a SecurityAlert pointing at the same event.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.db import transaction

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from audit.services import audit_event_record, security_alert_raise


@transaction.atomic
def ingest_refusal_record(
    *,
    source: str,
    reason: str,
    failure: str,
    actor: Any = None,
    device: Any = None,
    batch: uuid.UUID | None = None,
    item: Any = None,
    source_address: str | None = None,
    system_principal: str = "",
    detail: Mapping[str, Any] | None = None,
    alert: str = "",
) -> AuditEvent:
    """Record one refusal at a door, in the current tenant (see the module docstring). With `alert` (a
    SecurityAlert kind), the event is the alert's too. Returns the event."""
    extra: dict[str, Any] = {"source": str(source), "failure": str(failure), "batch": str(batch) if batch else ""}
    if item is not None:
        extra["ingest_item"] = str(item.public_id)
    if device is not None:
        extra["device"] = str(device.public_id)
    if detail:
        extra["door"] = dict(detail)
    if alert:
        return security_alert_raise(
            kind=alert,
            summary=reason,
            event=EventType.INGEST_REJECTED,
            actor=actor,
            target=item,
            outcome=Outcome.MINOR_FAILURE,
            extra=extra,
        ).event
    return audit_event_record(
        event=EventType.INGEST_REJECTED,
        actor=actor,
        target=item,
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=reason,
        source_address=source_address,
        system_principal=system_principal,
        extra=extra,
    )
