"""Reads of the audit trail."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.db import models

from audit.events import EventType
from audit.models import GENESIS_HASH, AuditChain, AuditEvent
from tenants import access
from tenants.models import Tenant
from tenants.scoping import current_tenant

# The years an audit filter may name (the API's since/until, the page's dates): the trail cannot predate 1970 nor
# run past 2999, and dates at the edges of the calendar (year 1, 9999) overflow on the way to a UTC instant.
AUDIT_FILTER_YEARS = range(1970, 3000)
AUDIT_FILTER_YEARS_REASON = "Use a date between the years 1970 and 2999."


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


# What a study's access history shows: reads of it, and who was given or took access to it.
STUDY_HISTORY_EVENTS = (
    EventType.INSTANCES_ACCESSED,
    EventType.INSTANCES_RETRIEVED,
    EventType.INSTANCES_MOVED,
    EventType.STUDY_EXPORTED,
    EventType.DISCLOSURE_EXPORTED,
    EventType.STUDY_SHARED,
    EventType.SHARE_REVOKED,
    EventType.BREAK_GLASS_STARTED,
    EventType.BREAK_GLASS_ENDED,
    EventType.BREAK_GLASS_REVIEWED,
)


def audit_events_for_study(*, actor: Any, study: Any) -> models.QuerySet[AuditEvent]:
    """The current tenant's events naming `study` (a `studies.Study`) as a participant, of the kinds in
    STUDY_HISTORY_EVENTS, newest first: the study's access history, for whoever sees the study
    (`studies.view_study` through tenants.access); NotVisible otherwise, like the study itself. The caller
    records the AUDIT_LOG_USED event of the read. (The study comes as an object, not a UID: this app may not
    import the studies app, and the visibility check needs the row.)"""
    if not access.has_perm(actor, "studies.view_study", study):
        raise access.NotVisible()
    return (
        AuditEvent.objects.filter(
            event_type__in=[int(e) for e in STUDY_HISTORY_EVENTS],
            participants__contains=[{"type": "study", "id": study.study_instance_uid}],
        )
        .select_related("actor_user")
        .order_by("-occurred_at", "-sequence")
    )


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
    # Only up to the head as read by the caller: writers append after it while we read, and a writer updates the
    # head in the same transaction as its row, so a committed row is never beyond the head read after it.
    rows = AuditEvent.unscoped_objects.filter(chain=chain, sequence__lte=chain.last_sequence).order_by("sequence")
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
    head = AuditChain.objects.get(pk=chain.pk)
    stray = (
        AuditEvent.unscoped_objects.filter(chain=chain, sequence__gt=head.last_sequence)
        .order_by("sequence")
        .values_list("sequence", flat=True)
        .first()
    )
    if stray is not None:
        return ChainVerification(chain.key, count, stray, "event beyond the chain head")
    return ChainVerification(chain.key, count, None, "")


def audit_chain_list(*, tenant: Tenant | None = None) -> models.QuerySet[AuditChain]:
    qs = AuditChain.objects.all().order_by("key")
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    return qs


def audit_event_get(*, actor: Any, public_id: Any) -> AuditEvent:
    """One audit event of the current tenant by public id (`tenants.view_audit`), or `NotVisible`."""
    try:
        return audit_event_list(actor=actor).get(public_id=public_id)
    except (AuditEvent.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise access.NotVisible() from exc


# The merged trail: AuditEvent rows and django-auditlog field changes in one list, newest first
# ------------------------------------------------------------------------------

TRAIL_EVENT = "event"
TRAIL_CHANGE = "change"


@dataclass(frozen=True)
class TrailEntry:
    """One line of the merged trail: an AuditEvent (`event`) or a django-auditlog LogEntry (`change`)."""

    kind: str
    at: datetime
    event: AuditEvent | None = None
    change: LogEntry | None = None


def audit_trail_keys(
    *,
    actor: Any,
    username: str = "",
    event_type: int | None = None,
    changes_only: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> models.QuerySet[Any]:
    """The current tenant's audit events and field changes as one list of `(kind, at, row id)`, newest first.

    The database merges the two tables (UNION ALL, ordered, so slicing gives any page correctly without reading
    the rows before it into Python); `audit_trail_entries` then loads the rows of one page or batch.
    `event_type` keeps only events of that verb (a field change has none); `changes_only` keeps only changes.
    Needs `tenants.view_audit`; without it the list is empty.
    """
    kind = models.CharField(max_length=8)
    events = audit_event_list(actor=actor, username=username, event_type=event_type, since=since, until=until)
    changes = audit_change_list(actor=actor, username=username, since=since, until=until)
    if changes_only:
        events = events.none()
    if event_type is not None:
        changes = changes.none()
    event_keys = (
        events.order_by()
        .annotate(trail_kind=models.Value(TRAIL_EVENT, output_field=kind), trail_at=models.F("occurred_at"),
                  trail_id=models.F("pk"))
        .values_list("trail_kind", "trail_at", "trail_id")
    )  # fmt: skip
    change_keys = (
        changes.order_by()
        .annotate(trail_kind=models.Value(TRAIL_CHANGE, output_field=kind), trail_at=models.F("timestamp"),
                  trail_id=models.F("pk"))
        .values_list("trail_kind", "trail_at", "trail_id")
    )  # fmt: skip
    return event_keys.union(change_keys, all=True).order_by("-trail_at", "-trail_id")


def audit_trail_entries(keys: Iterable[tuple[str, datetime, int]]) -> list[TrailEntry]:
    """Load the rows behind trail keys (one page or batch), in the keys' order. Runs inside the tenant scope."""
    keys = list(keys)
    event_ids = [row_id for kind, _, row_id in keys if kind == TRAIL_EVENT]
    change_ids = [row_id for kind, _, row_id in keys if kind == TRAIL_CHANGE]
    events = AuditEvent.objects.select_related("actor_user").in_bulk(event_ids) if event_ids else {}
    changes = LogEntry.objects.select_related("actor", "content_type").in_bulk(change_ids) if change_ids else {}
    entries = []
    for kind, at, row_id in keys:
        if kind == TRAIL_EVENT and row_id in events:
            entries.append(TrailEntry(kind, at, event=events[row_id]))
        elif kind == TRAIL_CHANGE and row_id in changes:
            entries.append(TrailEntry(kind, at, change=changes[row_id]))
    return entries
