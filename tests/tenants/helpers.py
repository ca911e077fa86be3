"""Small helpers shared by the tenants tests: audit rows, memberships and clients."""

from __future__ import annotations

import uuid
from typing import Any

from django.test import Client

from audit.events import EventType
from audit.models import AuditEvent
from tenants import services
from tenants.models import ApiToken, Membership, Tenant, User
from tenants.scoping import tenant_scope


def events(tenant: Tenant, event: EventType) -> list[AuditEvent]:
    """The tenant's audit events of one type, oldest first."""
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event).order_by("sequence"))


def last_event(tenant: Tenant, event: EventType) -> AuditEvent:
    found = events(tenant, event)
    assert found, f"no {event.name} event in {tenant.slug}"
    return found[-1]


def membership_of(user: User, tenant: Tenant) -> Membership:
    with tenant_scope(tenant):
        return Membership.objects.select_related("user", "tenant").get(user=user)


def token_for(user: User, tenant: Tenant, *, name: str = "script", days: int | None = None) -> tuple[ApiToken, str]:
    with tenant_scope(tenant):
        return services.api_token_create(actor=user, tenant=tenant, name=name, days=days)


def registered_client(client: Client, user: User) -> Client:
    """Register the test client's session as the login view does, so that ending sessions can find it."""
    services.session_register(user=user, session_key=client.session.session_key)
    return client


def random_id() -> str:
    return str(uuid.uuid4())


def problem(response: Any) -> dict[str, Any]:
    assert response["Content-Type"].startswith("application/problem+json"), response["Content-Type"]
    return response.json()
