"""Tenants: created by platform work, with their role groups and their audit chain."""

from __future__ import annotations

from typing import Any

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


@transaction.atomic
def tenant_ingest_quota_set(*, tenant: Tenant, per_hour: int | None, per_day: int | None) -> Tenant:
    """Set the tenant's own ingestion quotas in bytes (None: the platform's INGEST_QUOTA_BYTES_PER_*; 0: no quota).
    Platform work (an operator's command). Records TENANT_QUOTA_SET with the old and new figures."""
    old = {"per_hour": tenant.ingest_quota_bytes_per_hour, "per_day": tenant.ingest_quota_bytes_per_day}
    tenant.ingest_quota_bytes_per_hour = per_hour
    tenant.ingest_quota_bytes_per_day = per_day
    tenant.full_clean()
    tenant.save(update_fields=["ingest_quota_bytes_per_hour", "ingest_quota_bytes_per_day", "updated_at"])
    audit_event_record(
        event=EventType.TENANT_QUOTA_SET,
        tenant=tenant,
        target=tenant,
        extra={"old": old, "new": {"per_hour": per_hour, "per_day": per_day}},
    )
    return tenant


@transaction.atomic
def tenant_export_policy_set(*, actor: Any, tenant: Tenant, exports_must_be_encrypted: bool) -> Tenant:
    """Make password-encrypted bundles compulsory (or not) for the tenant's identified exports. A tenant
    administrator's security setting with a permission of its own (`tenants.manage_export_policy`, checked here),
    not the trusted networks' one. Records TENANT_EXPORT_POLICY_SET with the old and new values."""
    access.require(actor, "tenants.manage_export_policy", tenant)
    old = tenant.exports_must_be_encrypted
    tenant.exports_must_be_encrypted = exports_must_be_encrypted
    tenant.save(update_fields=["exports_must_be_encrypted", "updated_at"])
    audit_event_record(
        event=EventType.TENANT_EXPORT_POLICY_SET,
        actor=actor,
        tenant=tenant,
        target=tenant,
        extra={"exports_must_be_encrypted": {"old": old, "new": exports_must_be_encrypted}},
    )
    return tenant
