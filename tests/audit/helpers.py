"""Small helpers shared by the audit tests: seed events through the real writer, read them back."""

from __future__ import annotations

from typing import Any

from audit.events import EventType
from audit.models import AuditEvent
from audit.services import audit_event_record
from tenants.models import Tenant
from tenants.scoping import tenant_scope


def record(tenant: Tenant, event: EventType = EventType.LOGIN_SUCCEEDED, **kwargs: Any) -> AuditEvent:
    return audit_event_record(event=event, tenant=tenant, **kwargs)


def events_of(tenant: Tenant, event: EventType) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event.value).order_by("sequence"))


def last_event(tenant: Tenant, event: EventType) -> AuditEvent:
    found = events_of(tenant, event)
    assert found, f"no {event.name} event in {tenant.slug}"
    return found[-1]
