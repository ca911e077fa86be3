"""Tenants: created by platform work, with their role groups and their audit chain."""

from __future__ import annotations

from django.db import transaction

from audit.events import EventType
from audit.services import audit_chain_create, audit_event_record
from tenants import access
from tenants.models import Tenant


@transaction.atomic
def tenant_create(*, slug: str, name: str, ae_title: str | None = None) -> Tenant:
    """Create a tenant with its role groups and its audit chain. Platform work: no tenant actor.

    `ae_title` is the called AE title DICOM peers use to reach this tenant's archive.
    Idempotent by slug: an existing tenant is returned unchanged (its groups are re-checked).
    """
    tenant = Tenant.objects.filter(slug=slug).first()
    created = tenant is None
    if tenant is None:
        tenant = Tenant(slug=slug, name=name, ae_title=ae_title.upper() if ae_title else None)
        tenant.full_clean()
        tenant.save()
    elif ae_title and not tenant.ae_title:
        # A tenant made before it had an AE title (an older demo database) gets the one now asked for.
        tenant.ae_title = ae_title.upper()
        tenant.full_clean()
        tenant.save(update_fields=["ae_title", "updated_at"])
    access.role_groups_install(tenant=tenant)
    audit_chain_create(tenant=tenant)
    if created:
        audit_event_record(event=EventType.TENANT_CREATED, tenant=tenant, target=tenant)
    return tenant
