"""The audit chains' head rows as the tests read them: platform work (the rows are under row-level security, and
the tests read them outside any tenant's scope)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from audit.models import AuditChain
from tenants.models import Tenant
from tenants.scoping import platform_scope

T = TypeVar("T")


def chain_of(tenant: Tenant) -> AuditChain:
    with platform_scope():
        return AuditChain.objects.get(tenant=tenant)


def chain_by_key(key: str) -> AuditChain:
    with platform_scope():
        return AuditChain.objects.get(key=key)


def platform_read(read: Callable[[], T]) -> T:
    """`read()` in a platform scope: a test's look across tenants (or at the platform's rows) outside any scope."""
    with platform_scope():
        return read()
