"""Helpers of the training tests: courses adopted and required through the real services, completions recorded
in the past, audit rows."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.utils import timezone

from audit.events import EventType
from audit.models import AuditEvent
from tenants.models import Role, Tenant, User
from tenants.scoping import tenant_scope
from training import services
from training.models import CatalogueCourse, Completion, Course, Requirement

PDF = b"%PDF-1.4\n% certificate\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


def today() -> date:
    return timezone.localdate()


def adopt(tenant: Tenant, officer: User, code: str = "hipaa-security-awareness") -> Course:
    services.catalogue_ensure()
    with tenant_scope(tenant):
        return services.course_adopt(actor=officer, catalogue_course=CatalogueCourse.objects.get(code=code))


def require(tenant: Tenant, officer: User, course: Course, role: str = Role.RADIOLOGIST, **kw: Any) -> Requirement:
    with tenant_scope(tenant):
        return services.requirement_set(actor=officer, course=course, role=role, **kw)


def record(tenant: Tenant, officer: User, user: User, course: Course, *, expires_on: date, **kw: Any) -> Completion:
    """A completion recorded by `officer`, expiring on `expires_on` (completed a year before)."""
    with tenant_scope(tenant):
        return services.completion_record(
            actor=officer, user=user, course=course, completed_on=min(expires_on - timedelta(days=365), today()),
            expires_on=expires_on, evidence=kw.pop("evidence", PDF), evidence_name="cert.pdf", **kw,
        )  # fmt: skip


def events(tenant: Tenant, event: EventType) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event).order_by("sequence"))


def last_event(tenant: Tenant, event: EventType) -> AuditEvent:
    found = events(tenant, event)
    assert found, f"no {event.name} event in {tenant.slug}"
    return found[-1]
