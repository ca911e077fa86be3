"""The audit chains' head rows as the tests read them: platform work (the rows are under row-level security, and
the tests read them outside any tenant's scope)."""

from __future__ import annotations

from audit.models import AuditChain
from tenants.models import Tenant
from tenants.scoping import platform_scope


def chain_of(tenant: Tenant) -> AuditChain:
    with platform_scope():
        return AuditChain.objects.get(tenant=tenant)


def chain_by_key(key: str) -> AuditChain:
    with platform_scope():
        return AuditChain.objects.get(key=key)
