"""The one tenant-scope mechanism.

A tenant-owned model's default manager (`objects`) filters every query to the tenant of the active scope
and raises `TenantScopeError` when no scope is active: forgetting the scope fails closed, never open.

Only these open a scope: the web kit's `TenantApi`, `TenantPageView` and `task_context(...)` (portal.web), the
DICOM listener, and explicit `with tenant_scope(...)` in commands and platform code.
`unscoped_objects` is the only bypass; `tests/test_architecture.py` allows it in a short list of files.

The same scope is the database's second wall (issue 14, row-level security): every query a Django connection
runs carries the scope as the PostgreSQL setting `enclave.tenant_id` (tenants/db, the database backend), and a
policy on every tenant-owned table lets through only that tenant's rows. Platform work that legitimately crosses
tenants (fan-out jobs, /ops/, the audit verifier, backups) opens `platform_scope()`: the setting `platform`,
which the policies let through. `unscoped_objects` evaluates its queries in a platform scope. With no scope the
setting is empty and the policies let nothing through (fail closed). The innermost scope wins: a tenant scope
inside a platform scope is that tenant's, a platform scope inside a tenant scope reads across tenants (the
ORM's own filter of `objects` still applies).
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
# The value of the database setting `enclave.tenant_id` for the queries of this context: "" (no scope: nothing),
# a tenant's primary key, or PLATFORM.
_database_scope: ContextVar[str] = ContextVar("enclave_database_scope", default="")

# The database setting's value that lets platform work through the row-level security policies.
PLATFORM = "platform"
# The PostgreSQL setting (a custom, dotted one) the policies read.
DATABASE_SETTING = "enclave.tenant_id"


@contextmanager
def tenant_scope(tenant: Tenant) -> Iterator[Tenant]:
    """Make `tenant` the scope of every tenant-owned query inside the block."""
    if tenant is None or tenant.pk is None:
        raise TenantScopeError("A tenant scope needs a saved tenant.")
    token = _current_tenant.set(tenant)
    db_token = _database_scope.set(str(tenant.pk))
    try:
        yield tenant
    finally:
        _database_scope.reset(db_token)
        _current_tenant.reset(token)


@contextmanager
def platform_scope() -> Iterator[None]:
    """Let the queries inside the block through the database's row-level security for every tenant: for platform
    work only (beat jobs' fan-out, /ops/, audit verification, backups). The ORM's `objects` managers stay scoped
    (or fail closed) as before: this opens the second wall, not the first."""
    token = _database_scope.set(PLATFORM)
    try:
        yield
    finally:
        _database_scope.reset(token)


def database_scope() -> str:
    """The value of `enclave.tenant_id` for this context's queries: "" (none), a tenant's id, or PLATFORM."""
    return _database_scope.get()


def current_tenant() -> Tenant:
    tenant = _current_tenant.get()
    if tenant is None:
        raise TenantScopeError("No tenant scope is active: tenant-owned data cannot be read or written.")
    return tenant


def current_tenant_or_none() -> Tenant | None:
    return _current_tenant.get()


class PlatformQuerySet(models.QuerySet):
    """The queryset of `unscoped_objects`: each query it runs itself runs in a platform scope, so that the bypass of
    the ORM's scope is also, and only, the bypass of the database's. (Rows it loads, saved later, are saved in
    the scope of the code that saves them.)"""

    def _fetch_all(self) -> None:
        with platform_scope():
            super()._fetch_all()

    def iterator(self, chunk_size: int | None = None) -> Iterator[Any]:
        rows = super().iterator(chunk_size=chunk_size)
        while True:  # the scope around each step only, not around the caller's work between them
            with platform_scope():
                row = next(rows, _END)
            if row is _END:
                return
            yield row

    def count(self) -> int:
        with platform_scope():
            return super().count()

    def exists(self) -> bool:
        with platform_scope():
            return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with platform_scope():
            return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        with platform_scope():
            return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        with platform_scope():
            return super().delete()

    def contains(self, obj: Any) -> bool:
        with platform_scope():
            return super().contains(obj)

    def explain(self, *, format: Any = None, **options: Any) -> str:
        with platform_scope():
            return super().explain(format=format, **options)


_END = object()

PlatformManager = models.Manager.from_queryset(PlatformQuerySet)


class TenantScopedManager(models.Manager):
    """Default manager of every tenant-owned model: only the current tenant's rows, or an error."""

    def get_queryset(self) -> models.QuerySet[Any]:
        return super().get_queryset().filter(tenant_id=current_tenant().pk)
