"""What every tenant task runs inside: the Celery door's counterpart of `TenantApi` and `TenantPageView`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from audit.context import audit_context, current
from portal.web.actor import actor_set
from tenants.models import Tenant, User
from tenants.scoping import tenant_scope


@contextmanager
def task_context(*, tenant_id: int, actor_id: int | None = None, principal: str = "") -> Iterator[Tenant]:
    """The tenant scope, the auditlog actor and the audit principal, for the body of a task.

    Raises `Tenant.DoesNotExist` for a tenant that is gone; the task decides whether to log and return.
    """
    tenant = Tenant.objects.get(pk=tenant_id)
    actor = User.objects.filter(pk=actor_id).first() if actor_id is not None else None
    # One correlation id per task run (unless a caller already set one), so the events and the field changes
    # of one run can be told apart and shown together on the audit page.
    request_id = current().request_id or uuid.uuid4().hex
    with tenant_scope(tenant), audit_context(system_principal=principal or "enclave:worker", request_id=request_id):
        if actor is not None:
            with actor_set(actor, remote_addr=None):
                yield tenant
        else:
            yield tenant
