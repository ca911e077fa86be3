"""Reads of the audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from auditlog.models import LogEntry
from django.db import models

from audit.models import GENESIS_HASH, AuditChain, AuditEvent
from tenants import access
from tenants.models import Tenant
from tenants.scoping import current_tenant


def audit_event_list(
    *,
    actor: Any,
    user_id: int | None = None,
    username: str = "",
    event_type: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> models.QuerySet[AuditEvent]:
    """The current tenant's audit events that `actor` may read (`tenants.view_audit`), newest first."""
    qs = access.visible(actor, "tenants.view_audit", AuditEvent.objects.all())
    if user_id is not None:
        qs = qs.filter(actor_user_id=user_id)
    if username:
        qs = qs.filter(actor_username__iexact=username)
    if event_type is not None:
        qs = qs.filter(event_type=event_type)
    if since is not None:
        qs = qs.filter(occurred_at__gte=since)
    if until is not None:
        qs = qs.filter(occurred_at__lt=until)
    return qs.select_related("actor_user").order_by("-occurred_at", "-sequence")


def audit_change_list(
    *,
    actor: Any,
    user_id: int | None = None,
    username: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> models.QuerySet[LogEntry]:
    """django-auditlog's field changes of the current tenant's rows, newest first (`tenants.view_audit`).

    LogEntry is django-auditlog's table, not tenant-owned: the tenant is the `tenant_id` that
    `TenantOwnedModel.get_additional_data` stored with each entry.
    """
    tenant = current_tenant()
    if not access.has_perm(actor, "tenants.view_audit", tenant):
        return LogEntry.objects.none()
    qs = LogEntry.objects.filter(additional_data__tenant_id=tenant.pk)
    if user_id is not None:
        qs = qs.filter(actor_id=user_id)
    if username:
        qs = qs.filter(actor__username__iexact=username)
    if since is not None:
        qs = qs.filter(timestamp__gte=since)
    if until is not None:
        qs = qs.filter(timestamp__lt=until)
    return qs.select_related("actor", "content_type").order_by("-timestamp", "-pk")


@dataclass(frozen=True)
class ChainVerification:
    chain: str
    events: int
    first_broken_sequence: int | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.first_broken_sequence is None


def audit_chain_verify(*, chain: AuditChain) -> ChainVerification:
    """Walk one chain from its first event and recompute every hash.

    Finds an edited row (its hash no longer matches), a deleted row (a gap in the sequence, or a tail shorter
    than the chain head says) and a reordered or re-linked row (its `prev_hash` is not the hash before it).
    Reads through `unscoped_objects`: verification is platform work over every tenant (allow-listed).
    """
    expected_sequence = 1
    prev_hash = GENESIS_HASH
    count = 0
    rows = AuditEvent.unscoped_objects.filter(chain=chain).order_by("sequence")
    for row in rows.iterator(chunk_size=2000):
        if row.sequence != expected_sequence:
            return ChainVerification(chain.key, count, expected_sequence, "missing event")
        if row.prev_hash != prev_hash:
            return ChainVerification(chain.key, count, row.sequence, "link to the previous event broken")
        if row.compute_hash(prev_hash) != row.hash:
            return ChainVerification(chain.key, count, row.sequence, "event altered")
        prev_hash = row.hash
        expected_sequence += 1
        count += 1
    if chain.last_sequence >= expected_sequence:
        return ChainVerification(chain.key, count, expected_sequence, "missing event")
    if chain.last_sequence and chain.last_hash != prev_hash:
        return ChainVerification(chain.key, count, chain.last_sequence, "chain head does not match the last event")
    return ChainVerification(chain.key, count, None, "")


def audit_chain_list(*, tenant: Tenant | None = None) -> models.QuerySet[AuditChain]:
    qs = AuditChain.objects.all().order_by("key")
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    return qs
