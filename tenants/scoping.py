"""The one tenant-scope mechanism.

A tenant-owned model's default manager (`objects`) filters every query to the tenant of the active scope
and raises `TenantScopeError` when no scope is active: forgetting the scope fails closed, never open.

Only these open a scope: `portal.api.base.TenantApi`, `portal.views.TenantPageView`, `task_context(...)` in
Celery tasks, the DICOM listener, and explicit `with tenant_scope(...)` in commands and platform code.
`unscoped_objects` is the only bypass; `tests/test_architecture.py` allows it in a short list of files.
"""

from __future__ import annotations

import uuid
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


class TenantScopedQuerySet(models.QuerySet):
    pass


class TenantScopedManager(models.Manager):
    """Default manager of every tenant-owned model: only the current tenant's rows, or an error."""

    def get_queryset(self) -> models.QuerySet[Any]:
        return TenantScopedQuerySet(self.model, using=self._db).filter(tenant_id=current_tenant().pk)


@contextmanager
def task_context(*, tenant_id: int, actor_id: int | None = None, principal: str = "") -> Iterator[Tenant]:
    """What every tenant task runs inside: the tenant scope, the auditlog actor and the audit principal.

    Raises `Tenant.DoesNotExist` for a tenant that is gone; the task decides whether to log and return.
    """
    from auditlog.context import set_actor

    from audit.context import audit_context, current
    from tenants.models import Tenant, User

    tenant = Tenant.objects.get(pk=tenant_id)
    actor = User.objects.filter(pk=actor_id).first() if actor_id is not None else None
    # One correlation id per task run (unless a caller already set one), so the events and the field changes
    # of one run can be told apart and shown together on the audit page.
    request_id = current().request_id or uuid.uuid4().hex
    with tenant_scope(tenant), audit_context(system_principal=principal or "enclave:worker", request_id=request_id):
        if actor is not None:
            with set_actor(actor):
                yield tenant
        else:
            yield tenant
