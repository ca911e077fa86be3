"""Reads of the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from auditlog.models import LogEntry
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import storages
from django.db import models
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, TruncDay
from django.utils import timezone

from audit import signing
from audit.events import EventType
from audit.models import GENESIS_HASH, AuditChain, AuditDigest, AuditEvent, ChangeSeal, Incident, SecurityAlert
from tenants import access
from tenants.models import Tenant
from tenants.scoping import current_tenant, platform_scope

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


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_chain_verify(*, chain: AuditChain, using: str = "default") -> ChainVerification:
    """Walk one chain from its first event and recompute every hash.

    Finds an edited row (its hash no longer matches), a deleted row (a gap in the sequence, or a tail shorter
    than the chain head says) and a reordered or re-linked row (its `prev_hash` is not the hash before it).
    Reads through `unscoped_objects`: verification is platform work over every tenant (allow-listed). `using`
    names another database alias holding a copy of the trail (the restore drill's scratch database).
    """
    expected_sequence = 1
    prev_hash = GENESIS_HASH
    count = 0
    # Only up to the head as read by the caller: writers append after it while we read, and a writer updates the
    # head in the same transaction as its row, so a committed row is never beyond the head read after it.
    rows = (
        AuditEvent.unscoped_objects.using(using)
        .filter(chain=chain, sequence__lte=chain.last_sequence)
        .order_by("sequence")
    )
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
    head = AuditChain.objects.using(using).get(pk=chain.pk)
    stray = (
        AuditEvent.unscoped_objects.using(using)
        .filter(chain=chain, sequence__gt=head.last_sequence)
        .order_by("sequence")
        .values_list("sequence", flat=True)
        .first()
    )
    if stray is not None:
        return ChainVerification(chain.key, count, stray, "event beyond the chain head")
    return ChainVerification(chain.key, count, None, "")


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_changes_verify(*, tenant_id: int | None) -> ChainVerification:
    """Walk the seals over one tenant's django-auditlog entries (None: the platform's) and recompute each from
    the entry row: finds an edited entry, a deleted entry (its seal remains), a deleted seal (a gap), a truncated
    tail (the head says more), and an entry never sealed though older than AUDIT_SEAL_GRACE_SECONDS (inserted
    behind the application's back, or a sealer that stopped). Platform work: reads every tenant's entries."""
    key = ChangeSeal.chain_key(tenant_id)
    chain = AuditChain.objects.filter(key=key).first()
    last_sequence, last_hash = (chain.last_sequence, chain.last_hash) if chain else (0, GENESIS_HASH)
    expected_sequence, prev_hash, count = 1, GENESIS_HASH, 0
    if chain is not None:
        seals = ChangeSeal.objects.filter(chain=chain, sequence__lte=last_sequence).order_by("sequence")
        batch: list[ChangeSeal] = []
        iterator = seals.iterator(chunk_size=2000)
        while True:
            batch = [seal for _, seal in zip(range(2000), iterator, strict=False)]
            if not batch:
                break
            entries = LogEntry.objects.in_bulk([seal.entry_id for seal in batch])
            for seal in batch:
                if seal.sequence != expected_sequence:
                    return ChainVerification(key, count, expected_sequence, "missing change seal")
                if seal.prev_hash != prev_hash:
                    return ChainVerification(key, count, seal.sequence, "link to the previous change broken")
                entry = entries.get(seal.entry_id)
                if entry is None:
                    return ChainVerification(key, count, seal.sequence, f"change entry {seal.entry_id} deleted")
                if ChangeSeal.compute_hash(prev_hash, entry) != seal.hash:
                    return ChainVerification(key, count, seal.sequence, f"change entry {seal.entry_id} altered")
                prev_hash = seal.hash
                expected_sequence += 1
                count += 1
    if last_sequence >= expected_sequence:
        return ChainVerification(key, count, expected_sequence, "missing change seal")
    if last_sequence and last_hash != prev_hash:
        return ChainVerification(key, count, last_sequence, "chain head does not match the last seal")
    grace = timezone.now() - timedelta(seconds=settings.AUDIT_SEAL_GRACE_SECONDS)
    entries_of = (
        LogEntry.objects.filter(additional_data__tenant_id=tenant_id)
        if tenant_id is not None
        else LogEntry.objects.filter(
            models.Q(additional_data__isnull=True) | models.Q(additional_data__tenant_id__isnull=True)
        )
    )
    unsealed = (
        entries_of.filter(timestamp__lt=grace)
        .filter(~models.Exists(ChangeSeal.objects.filter(entry_id=models.OuterRef("pk"))))
        .order_by("pk")
        .values_list("pk", flat=True)
        .first()
    )
    if unsealed is not None:
        return ChainVerification(key, count, expected_sequence, f"change entry {unsealed} was never sealed")
    return ChainVerification(key, count, None, "")


def _digest_file_problem(store: Any, digest: AuditDigest, chain: AuditChain, key: Any) -> str:
    """What is wrong with a digest's file in the replica store ("" when nothing): missing, unreadable, signed by
    someone else, or saying something else than the row."""
    try:
        with store.open(digest.path, "rb") as handle:
            data = json.loads(handle.read())
        signature = data.pop("signature")
        data.pop("public_key", None)
    except FileNotFoundError:
        return f"digest file of {digest.day} is missing from the replica store"
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return f"digest file of {digest.day} is unreadable"
    if not isinstance(signature, str) or not signing.signature_valid(key, signature, AuditDigest.message_of(data)):
        return f"digest file of {digest.day} has a forged signature"
    if data != digest.document(chain) or signature != digest.signature:
        return f"digest file of {digest.day} does not match its record"
    return ""


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_digests_verify(*, chain: AuditChain) -> list[str]:
    """What is wrong with the chain's signed digests (empty: nothing), checked with the public key
    (audit.signing.verify_key; the caller checks one is configured): a row whose Ed25519 signature does not match
    (forged or altered), a digest that does not name the previous one's signature (a digest removed or
    inserted), a file in the replica store that is missing, forged or differs from its row, a file no row
    names (a row deleted), and a signed head the chain no longer reaches (a truncated tail, or a chain rewritten
    from an earlier point). Rows of the former HMAC key are linked but not checked. Platform work."""
    key = signing.verify_key()
    if key is None:
        return []
    store = storages["replica"]
    problems = []
    is_changes = chain.key.startswith("changes:")
    previous_signature = ""
    digests = list(AuditDigest.objects.filter(chain=chain).order_by("day", "pk"))
    for digest in digests:
        follows = digest.prev_signature == previous_signature
        previous_signature = digest.signature
        if digest.algorithm != AuditDigest.ED25519:
            continue
        if not follows:
            problems.append(f"digest of {digest.day} does not follow the previous digest (one removed or inserted)")
        if not signing.signature_valid(key, digest.signature, digest.message(chain)):
            problems.append(f"digest of {digest.day} has a forged signature")
            continue
        if file_problem := _digest_file_problem(store, digest, chain, key):
            problems.append(file_problem)
        rows: models.QuerySet[Any] = (
            ChangeSeal.objects.filter(chain=chain) if is_changes else AuditEvent.unscoped_objects.filter(chain=chain)
        )
        head = list(rows.filter(sequence=digest.last_sequence).values_list("hash", flat=True))
        if head != [digest.last_hash]:
            problems.append(
                f"digest of {digest.day} signed sequence {digest.last_sequence}, which the chain no longer holds"
            )
    if digests:
        folder = AuditDigest.path_for(chain, digests[-1].day).rsplit("/", 1)[0]
        named = {digest.path.rsplit("/", 1)[-1] for digest in digests if digest.path}
        try:
            files = store.listdir(folder)[1]
        except (FileNotFoundError, NotImplementedError):
            files = []
        for name in sorted(set(files) - named):
            problems.append(f"digest file {folder}/{name} has no record (a digest removed)")
    return problems


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


@dataclass(frozen=True)
class TrailFilters:
    """What the browser filters the merged trail by. Patient, study and device name participants of audit
    events: a field change names none, so with any of them (or a failed outcome, or an event verb) field changes
    drop out; a source address matches both layers (django-auditlog keeps the request's address)."""

    username: str = ""
    event_type: int | None = None
    changes_only: bool = False
    since: datetime | None = None
    until: datetime | None = None
    patient_id: str = ""
    study_uid: str = ""
    device: str = ""
    outcome: int | None = None
    source_address: str = ""

    @property
    def events_only(self) -> bool:
        return bool(
            self.event_type is not None
            or self.patient_id
            or self.study_uid
            or self.device
            or (self.outcome is not None and self.outcome != 0)
        )


@dataclass(frozen=True)
class TrailCursor:
    """Where a page of the trail ends: the last key shown. The next page starts strictly after it in the
    trail's order (time, then kind, then row id, all descending; "event" sorts above "change"): a keyset, so
    page 10 000 costs what page 1 costs and entries arriving meanwhile do not shift it."""

    at: datetime
    kind: str
    row_id: int


def _event_filtered(qs: models.QuerySet[AuditEvent], f: TrailFilters) -> models.QuerySet[AuditEvent]:
    if f.event_type is not None:
        qs = qs.filter(event_type=f.event_type)
    if f.patient_id:
        qs = qs.filter(participants__contains=[{"type": "patient", "id": f.patient_id}])
    if f.study_uid:
        qs = qs.filter(participants__contains=[{"type": "study", "id": f.study_uid}])
    if f.device:
        qs = qs.filter(
            models.Q(system_principal__iexact=f"dicom:{f.device}")
            | models.Q(participants__contains=[{"type": "devices.device", "id": f.device}])
            | models.Q(participants__contains=[{"type": "devices.device", "name": f.device}])
        )
    if f.outcome is not None:
        qs = qs.filter(outcome=f.outcome)
    if f.source_address:
        qs = qs.filter(source_address=f.source_address)
    return qs


def _after(kind: str, at_field: str, cursor: TrailCursor | None) -> models.Q:
    """The keyset condition `(at, kind, id) < cursor` for the rows of one kind (see TrailCursor)."""
    if cursor is None:
        return models.Q()
    if kind == cursor.kind:
        # The redundant `at <= cursor` bounds the index range: without it, PostgreSQL reads the (time, id) index
        # from the newest row and filters out everything newer than the cursor, so a deep page costs its depth.
        return models.Q(**{f"{at_field}__lte": cursor.at}) & (
            models.Q(**{f"{at_field}__lt": cursor.at}) | models.Q(**{at_field: cursor.at, "pk__lt": cursor.row_id})
        )
    if kind < cursor.kind:
        return models.Q(**{f"{at_field}__lte": cursor.at})
    return models.Q(**{f"{at_field}__lt": cursor.at})


def _trail_sides(
    *, actor: Any, filters: TrailFilters, cursor: TrailCursor | None = None
) -> tuple[models.QuerySet[Any], models.QuerySet[Any]]:
    f = filters
    kind = models.CharField(max_length=8)
    events = audit_event_list(actor=actor, username=f.username, since=f.since, until=f.until)
    events = _event_filtered(events, f).filter(_after(TRAIL_EVENT, "occurred_at", cursor))
    changes = audit_change_list(actor=actor, username=f.username, since=f.since, until=f.until)
    if f.source_address:
        changes = changes.filter(remote_addr=f.source_address)
    changes = changes.filter(_after(TRAIL_CHANGE, "timestamp", cursor))
    if f.changes_only:
        events = events.none()
    if f.events_only:
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
    return event_keys, change_keys


TRAIL_ORDER = ("-trail_at", "-trail_kind", "-trail_id")


def audit_trail_keys(*, actor: Any, filters: TrailFilters) -> models.QuerySet[Any]:
    """The current tenant's audit events and field changes as one list of `(kind, at, row id)`, newest first.

    The database merges the two tables (UNION ALL, ordered); `audit_trail_entries` then loads the rows of one
    batch. For the browser's pages use `audit_trail_page` (keyset); this whole list is for exports.
    Needs `tenants.view_audit`; without it the list is empty.
    """
    event_keys, change_keys = _trail_sides(actor=actor, filters=filters)
    return event_keys.union(change_keys, all=True).order_by(*TRAIL_ORDER)


def audit_trail_page(
    *, actor: Any, filters: TrailFilters, after: TrailCursor | None = None, size: int = 50
) -> tuple[list[tuple[str, datetime, int]], TrailCursor | None]:
    """One page of `audit_trail_keys` after `after` (None: the newest), and the cursor of the next page (None
    when this is the last). Each side is ordered and limited by its own index before the merge, so the cost
    does not grow with the depth of the page or the size of the table (no OFFSET)."""
    event_keys, change_keys = _trail_sides(actor=actor, filters=filters, cursor=after)
    # Two index-ordered reads of at most size + 1 keys each, merged here: the page is among them.
    merged = [*event_keys.order_by("-trail_at", "-trail_id")[: size + 1],
              *change_keys.order_by("-trail_at", "-trail_id")[: size + 1]]  # fmt: skip
    keys = sorted(merged, key=lambda key: (key[1], key[0], key[2]), reverse=True)[: size + 1]
    if len(keys) <= size:
        return keys, None
    keys = keys[:size]
    kind, at, row_id = keys[-1]
    return keys, TrailCursor(at=at, kind=kind, row_id=row_id)


def audit_change_get(*, actor: Any, change_id: int) -> LogEntry:
    """One django-auditlog entry of the current tenant (`tenants.view_audit`), or `NotVisible` (another
    tenant's entry is the same as a missing one)."""
    try:
        return audit_change_list(actor=actor).get(pk=change_id)
    except (LogEntry.DoesNotExist, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


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


# Security alerts
# ------------------------------------------------------------------------------


def security_alert_list(*, actor: Any, status: str = "") -> models.QuerySet[SecurityAlert]:
    """The current tenant's security alerts (`tenants.view_audit`), newest first; `status` keeps one state."""
    qs = access.visible(actor, "tenants.view_audit", SecurityAlert.objects.all())
    if status:
        qs = qs.filter(status=status)
    return qs.select_related("acknowledged_by", "event").order_by("-raised_at", "-pk")


def security_alert_get(*, actor: Any, public_id: Any) -> SecurityAlert:
    """One alert of the current tenant (`tenants.view_audit`), or `NotVisible`."""
    try:
        return security_alert_list(actor=actor).get(public_id=public_id)
    except (SecurityAlert.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise access.NotVisible() from exc


def incident_list(*, actor: Any) -> models.QuerySet[Incident]:
    """The current tenant's incidents (`tenants.view_audit`), open ones first, newest discovery first."""
    qs = access.visible(actor, "tenants.view_audit", Incident.objects.all())
    return qs.select_related("opened_by").order_by(
        models.Case(models.When(status=Incident.Status.CLOSED, then=1), default=0), "-discovered_at", "-pk"
    )


def incident_get(*, actor: Any, public_id: Any) -> Incident:
    """One incident of the current tenant (`tenants.view_audit`), or `NotVisible`."""
    try:
        return incident_list(actor=actor).get(public_id=public_id)
    except (Incident.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise access.NotVisible() from exc


def security_alert_evidence(*, actor: Any, alert: SecurityAlert) -> list[AuditEvent]:
    """The events that made the alert (its own event first), in time order, from the current tenant."""
    ids = [alert.event.public_id, *alert.evidence]
    events = audit_event_list(actor=actor).filter(public_id__in=ids)
    return sorted(events, key=lambda event: (event.occurred_at, event.sequence))


# Accounting of disclosures (HIPAA 164.528) and breach scoping
# ------------------------------------------------------------------------------

# Data of a patient leaving the people who hold it: identified exports, shares, and instances sent to a device.
DISCLOSURE_EVENTS = (
    EventType.DISCLOSURE_EXPORTED,
    EventType.STUDY_SHARED,
    EventType.SHARE_REVOKED,
    EventType.INSTANCES_MOVED,
)


# HIPAA 164.528(a)(1): the accounting covers the six years before the request.
ACCOUNTING_YEARS = 6


def accounting_period_start(now: datetime) -> datetime:
    """The earliest moment the accounting asked for at `now` covers: the same date and time six years before
    (29 February falls back to 28 February)."""
    year = now.year - ACCOUNTING_YEARS
    try:
        return now.replace(year=year)
    except ValueError:
        return now.replace(year=year, day=28)


def audit_disclosure_get(*, actor: Any, public_id: Any) -> AuditEvent:
    """One disclosure event (DISCLOSURE_EVENTS) of the current tenant (`tenants.view_audit`), or `NotVisible`."""
    try:
        return audit_event_list(actor=actor).get(
            public_id=public_id, event_type__in=[int(e) for e in DISCLOSURE_EVENTS]
        )
    except (AuditEvent.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise access.NotVisible() from exc


def audit_disclosures_suspended(*, actor: Any, now: datetime) -> dict[str, datetime]:
    """The current tenant's disclosures withheld from the accounting at `now` (164.528(a)(2)): public id of the
    disclosure -> end of its latest suspension, for the suspensions that have not ended."""
    withheld: dict[str, datetime] = {}
    for event in audit_event_list(actor=actor, event_type=int(EventType.DISCLOSURE_ACCOUNTING_SUSPENDED)):
        extra = event.extra or {}
        try:
            until = datetime.fromisoformat(str(extra.get("until", "")))
        except ValueError:
            continue
        disclosure = str(extra.get("disclosure", ""))
        if disclosure and until > now and (disclosure not in withheld or until > withheld[disclosure]):
            withheld[disclosure] = until
    return withheld


def audit_disclosures_for_patient(
    *,
    actor: Any,
    patient_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    include_accesses: bool = False,
    now: datetime | None = None,
) -> models.QuerySet[AuditEvent]:
    """The current tenant's events that disclosed the patient's data (DISCLOSURE_EVENTS), or with
    `include_accesses` every event naming the patient (reads and searches too), oldest first
    (`tenants.view_audit`). Never older than six years before `now` (the look-back of 164.528(a)(1)), and
    without the disclosures whose accounting is suspended at `now` (164.528(a)(2)). The caller records the
    AUDIT_LOG_USED event of the read, naming the patient."""
    now = now or timezone.now()
    earliest = accounting_period_start(now)
    since = earliest if since is None else max(since, earliest)
    qs = audit_event_list(actor=actor, since=since, until=until).filter(
        participants__contains=[{"type": "patient", "id": patient_id}]
    )
    if not include_accesses:
        qs = qs.filter(event_type__in=[int(e) for e in DISCLOSURE_EVENTS])
    withheld = audit_disclosures_suspended(actor=actor, now=now)
    if withheld:
        qs = qs.exclude(public_id__in=list(withheld))
    return qs.order_by("occurred_at", "sequence")


# What touches patient data: reads, retrievals, searches, transfers, exports and shares (breach scoping).
PATIENT_DATA_EVENTS = (
    EventType.STUDIES_QUERIED,
    EventType.INSTANCES_ACCESSED,
    EventType.INSTANCES_RETRIEVED,
    EventType.INSTANCES_MOVED,
    EventType.INSTANCES_STORED,
    EventType.STUDY_EXPORTED,
    EventType.DISCLOSURE_EXPORTED,
    EventType.STUDY_SHARED,
    EventType.BREAK_GLASS_STARTED,
)


@dataclass
class TouchedPatient:
    patient_id: str
    name: str
    studies: set[str]
    events: int
    first: datetime
    last: datetime
    verbs: set[str]


def audit_breach_scope(
    *,
    actor: Any,
    since: datetime,
    until: datetime,
    username: str = "",
    device: str = "",
    source_address: str = "",
) -> list[TouchedPatient]:
    """The patients (with their studies) whose data a person, a device or an address read, received or found by
    a search in [since, until), from the current tenant's events (`tenants.view_audit`). At least one of
    `username`, `device`, `source_address` is required. Sorted by patient id."""
    if not (username or device or source_address):
        raise ValidationError("Name a user, a device or an address.")
    filters = TrailFilters(username=username, since=since, until=until, device=device, source_address=source_address)
    events = _event_filtered(audit_event_list(actor=actor, username=username, since=since, until=until), filters)
    events = events.filter(event_type__in=[int(e) for e in PATIENT_DATA_EVENTS]).order_by("occurred_at", "sequence")
    touched: dict[str, TouchedPatient] = {}
    for event in events.iterator(chunk_size=2000):
        # Participants come as patient, then that patient's studies (studies.services.reads.study_participants),
        # so a search that found several patients gives each their own studies.
        current: TouchedPatient | None = None
        seen: set[str] = set()
        for entry in event.participants or []:
            kind, entry_id = entry.get("type"), str(entry.get("id", ""))
            if kind == "patient" and entry_id:
                current = touched.get(entry_id)
                if current is None:
                    current = touched[entry_id] = TouchedPatient(
                        entry_id, str(entry.get("name", "")), set(), 0, event.occurred_at, event.occurred_at, set()
                    )
                if entry_id not in seen:
                    seen.add(entry_id)
                    current.events += 1
                    current.last = event.occurred_at
                    current.verbs.add(event.verb)
            elif kind == "study" and current is not None and entry_id:
                current.studies.add(entry_id)
    return [touched[pid] for pid in sorted(touched)]


# The tenant's dashboard
# ------------------------------------------------------------------------------

READ_EVENTS = (EventType.INSTANCES_ACCESSED, EventType.INSTANCES_RETRIEVED, EventType.INSTANCES_MOVED)


@dataclass
class Dashboard:
    days: list[dict[str, Any]]  # day, events, refusals, stored, rejected
    alerts_by_kind: list[dict[str, Any]]  # kind, status, count
    top_readers: list[dict[str, Any]]  # user, reads
    break_glass: dict[str, int]
    last_digest: Any


def audit_dashboard(*, actor: Any, days: int = 30, now: datetime | None = None) -> Dashboard:
    """The current tenant's trail summarised for its compliance officers (`tenants.view_audit`; `NotVisible`
    otherwise): per day for `days` days, events, refusals (any failed outcome), instances stored and rejected;
    alerts by rule and state; the ten people with the most reads of images; break-glass started and reviewed;
    the last signed digest of the tenant's chain. Aggregates in the database, one query each."""
    tenant = current_tenant()
    if not access.has_perm(actor, "tenants.view_audit", tenant):
        raise access.NotVisible()
    now = now or timezone.now()
    start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    events = AuditEvent.objects.filter(occurred_at__gte=start, occurred_at__lte=now)
    per_day = (
        events.annotate(day=TruncDay("occurred_at"))
        .values("day")
        .annotate(
            events=models.Count("pk"),
            refusals=models.Count("pk", filter=models.Q(outcome__gt=0)),
            # Instances, not events: one INSTANCES_STORED event covers a study's instances of one ingest batch
            # (its `extra.count`; an event without one counts as one instance).
            stored=Coalesce(
                models.Sum(
                    Coalesce(Cast(KeyTextTransform("count", "extra"), models.IntegerField()), 1),
                    filter=models.Q(event_type=EventType.INSTANCES_STORED),
                ),
                0,
            ),
            rejected=models.Count("pk", filter=models.Q(event_type=EventType.INGEST_REJECTED)),
        )
    )
    by_day = {row["day"].date(): row for row in per_day}
    series = []
    for offset in range(days):
        day = (start + timedelta(days=offset)).date()
        row: dict[str, Any] = dict(by_day.get(day, {}))
        series.append({"day": day, **{k: row.get(k, 0) for k in ("events", "refusals", "stored", "rejected")}})
    alerts = list(
        SecurityAlert.objects.values("kind", "status").annotate(count=models.Count("pk")).order_by("kind", "status")
    )
    readers = list(
        events.filter(event_type__in=[int(e) for e in READ_EVENTS])
        .exclude(actor_username="")
        .values("actor_username")
        .annotate(reads=models.Count("pk"))
        .order_by("-reads", "actor_username")[:10]
    )
    glass = events.aggregate(
        started=models.Count("pk", filter=models.Q(event_type=EventType.BREAK_GLASS_STARTED)),
        reviewed=models.Count("pk", filter=models.Q(event_type=EventType.BREAK_GLASS_REVIEWED)),
    )
    digest = AuditDigest.objects.filter(chain__tenant=tenant).order_by("-day").first()
    return Dashboard(
        days=series,
        alerts_by_kind=[dict(row) for row in alerts],
        top_readers=[{"user": row["actor_username"], "reads": row["reads"]} for row in readers],
        break_glass={"started": glass["started"], "reviewed": glass["reviewed"]},
        last_digest=digest,
    )


# The compliance report's sections from other apps
# ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportSection:
    """One section of the compliance report: a title, rows of (label, value), and whether it is in order (None:
    informational). Provided by the app that owns the facts (training, devices, the archive's encryption)."""

    title: str
    rows: list[tuple[str, str]]
    ok: bool | None = None
    note: str = ""


_report_sections: list[Callable[[Any], ReportSection]] = []


def compliance_section_register(provider: Callable[[Any], ReportSection]) -> None:
    """Add a section to the compliance report: `provider(actor)` runs inside the tenant's scope for a person who
    may read the trail. Registered from AppConfig.ready(): the audit app imports no other app."""
    if provider not in _report_sections:
        _report_sections.append(provider)


def compliance_sections(*, actor: Any) -> list[ReportSection]:
    """The registered sections for the current tenant (`tenants.view_audit`), in registration order."""
    access.require(actor, "tenants.view_audit", current_tenant())
    return [provider(actor) for provider in _report_sections]


def audit_trail_export() -> dict[str, Any]:
    """The current tenant's whole audit trail for a tenant's offboarding export (issue 13): every event in chain
    order with its `prev_hash` and `hash`, the chain head, and the signed daily digests, so that the receiver can
    recompute the chain. Platform operators' tool (no actor check: the caller is the offboarding service, which
    two operators approved). Returns plain JSON-ready data."""
    tenant = current_tenant()
    chain = AuditChain.objects.filter(tenant=tenant).first()
    events = [
        {
            "sequence": e.sequence,
            "public_id": str(e.public_id),
            "occurred_at": e.occurred_at.isoformat(),
            "event_type": e.event_type,
            "event_id": e.event_id,
            "event_type_code": e.event_type_code,
            "action": e.action,
            "outcome": e.outcome,
            "outcome_description": e.outcome_description,
            "actor_username": e.actor_username,
            "actor_role": e.actor_role,
            "system_principal": e.system_principal,
            "source_address": e.source_address,
            "target_type": e.target_type,
            "target_id": e.target_id,
            "participants": e.participants,
            "extra": e.extra,
            "prev_hash": e.prev_hash,
            "hash": e.hash,
            # hash = SHA-256(prev_hash + "\n" + canonical): the receiver recomputes the chain from these alone
            "canonical": e.canonical().decode(),
        }
        for e in AuditEvent.objects.order_by("sequence")
    ]
    digests = (
        [
            {
                "day": d.day.isoformat(),
                "last_sequence": d.last_sequence,
                "last_hash": d.last_hash,
                "signature": d.signature,
            }
            for d in AuditDigest.objects.filter(chain=chain).order_by("day")
        ]
        if chain is not None
        else []
    )
    return {
        "chain": chain.key if chain is not None else "",
        "last_sequence": chain.last_sequence if chain is not None else 0,
        "last_hash": chain.last_hash if chain is not None else GENESIS_HASH,
        "events": events,
        "digests": digests,
    }
