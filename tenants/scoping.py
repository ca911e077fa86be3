"""The one tenant-scope mechanism.

A tenant-owned model's default manager (`objects`) filters every query to the tenant of the active scope
and raises `TenantScopeError` when no scope is active: forgetting the scope fails closed, never open.

Only these open a scope: the web kit's `TenantApi`, `TenantPageView` and `task_context(...)` (portal.web), the
DICOM listener, and explicit `with tenant_scope(...)` in commands and platform code.
`unscoped_objects` is the only bypass; `tests/test_architecture.py` allows it in a short list of files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.db import models

if TYPE_CHECKING:
    from tenants.models import Tenant


class TenantScopeError(RuntimeError):
    """A tenant-owned table was touched with no tenant scope, or across scopes."""


_current_tenant: ContextVar[Tenant | None] = ContextVar("enclave_current_tenant", default=None)


@contextmanager
def tenant_scope(tenant: Tenant) -> Iterator[Tenant]:
    """Make `tenant` the scope of every tenant-owned query inside the block."""
    if tenant is None or tenant.pk is None:
        raise TenantScopeError("A tenant scope needs a saved tenant.")
    token = _current_tenant.set(tenant)
    try:
        yield tenant
    finally:
        _current_tenant.reset(token)


def current_tenant() -> Tenant:
    tenant = _current_tenant.get()
    if tenant is None:
        raise TenantScopeError("No tenant scope is active: tenant-owned data cannot be read or written.")
    return tenant


def current_tenant_or_none() -> Tenant | None:
    return _current_tenant.get()


class TenantScopedManager(models.Manager):
    """Default manager of every tenant-owned model: only the current tenant's rows, or an error."""

    def get_queryset(self) -> models.QuerySet[Any]:
        return super().get_queryset().filter(tenant_id=current_tenant().pk)
