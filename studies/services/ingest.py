"""The one ingestion pipeline. Three doors (C-STORE, STOW-RS, browser upload) call `ingest_receive`; the Celery
task calls `ingest_process`; the sweeper calls `ingest_requeue_stale`.

Receive: the bytes go to the quarantine store (encrypted, never served) and an IngestItem is created, in one
transaction; the task is queued when it commits. Process: claim the item and the items waiting with it, a batch
(compare-and-set), then for each limits, malware scan, preamble, parse and validate; then for the batch in one
transaction: promote the quarantined ciphertext to the archive and its replica, index, count, audit (one event per
study), mark stored.
Any failure marks the item rejected with a reason a person can read and keeps the quarantined bytes; an error
nobody foresaw is a rejection too (failure class `internal`), so no item is ever left waiting and every sender
hears a verdict.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connections, transaction
from django.db.models import BigIntegerField, Case, CharField, DateTimeField, Expression, F, Field, Q, Value, When
from django.utils import timezone
from redis.exceptions import RedisError

from audit.events import EventType, Outcome
from audit.services import audit_event_record, participant, security_alert_raise
from studies import scanning
from studies.dicom import parse as dicom_parse
from studies.dicom import preamble as dicom_preamble
from studies.models import Blob, IngestItem, Instance, Patient, Series, Study, StudyKey, person_name_key
from studies.storage import durable
from studies.storage.blobs import (
    BlobUnreadable,
    blob_delete,
    blob_files_synced_meanwhile,
    blob_promotable,
    blob_promote,
    blob_read,
    blob_read_sealed,
    blob_seal,
    blob_study_key_ids,
    blob_write,
)
from tenants.db.base import prepared_statements
from tenants.jobs import task_queue, task_queue_on_commit
from tenants.models import Tenant
from tenants.scoping import current_tenant

logger = logging.getLogger(__name__)


class Rejected(Exception):
    """The object cannot enter the archive; `reason` is shown to people, so it never holds patient data."""

    def __init__(self, reason: str, *, failure: str = IngestItem.Failure.INVALID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure

    @property
    def malware(self) -> bool:
        return self.failure == IngestItem.Failure.MALWARE


def ingest_limits() -> dicom_parse.Limits:
    return dicom_parse.Limits(
        max_bytes=settings.INGEST_MAX_BYTES,
        max_rows=settings.INGEST_MAX_ROWS,
        max_columns=settings.INGEST_MAX_COLUMNS,
        max_frames=settings.INGEST_MAX_FRAMES,
        max_pixel_bytes=settings.INGEST_MAX_PIXEL_BYTES,
    )


# Receive
# ------------------------------------------------------------------------------

QUOTA_PERIODS = (
    ("hour", 3600, "ingest_quota_bytes_per_hour", "INGEST_QUOTA_BYTES_PER_HOUR"),
    ("day", 86400, "ingest_quota_bytes_per_day", "INGEST_QUOTA_BYTES_PER_DAY"),
)


def ingest_quota_take(*, tenant: Tenant, size: int) -> None:
    """Count `size` bytes against the tenant's ingestion quotas (per hour and per day: the tenant's own figures,
    else the settings; 0 or none: no quota), or raise `Rejected` (failure `quota`) and count nothing.

    The counters are fixed windows in Redis (the Django cache), shared by every door and every process, so
    C-STORE, STOW-RS and the browser upload draw on one budget. Bytes are counted when received, before the
    pipeline's verdict: a refused object still used the link and the quarantine."""
    now = time.time()
    taken: list[tuple[str, int]] = []
    for name, period, field, setting in QUOTA_PERIODS:
        own = getattr(tenant, field)
        quota = int(own if own is not None else getattr(settings, setting))
        if quota <= 0:
            continue
        window = int(now // period)
        key = f"enclave:ingest-quota:{tenant.pk}:{period}:{window}"
        cache.add(key, 0, timeout=period + 60)
        used = cache.incr(key, size)
        if used > quota:
            for counted, amount in [*taken, (key, size)]:
                cache.decr(counted, amount)
            retry = max(1, math.ceil((window + 1) * period - now))
            raise Rejected(
                f"The organisation's ingestion quota of {quota} bytes per {name} is used up; "
                f"try again in {retry} seconds.",
                failure=IngestItem.Failure.QUOTA,
            )
        taken.append((key, size))


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _study_uid_hint(data: bytes) -> str:
    """The Study Instance UID in the header of a received object, read off its element headers (about 0.02 ms for
    a CT: `studies.dicom.parse.study_instance_uid_peek`), or "" when there is none that looks like a UID. Only the
    key of the quarantine copy depends on it: the worker parses and checks everything again, and promotes the copy
    only if this was the study it belongs to."""
    uid = dicom_parse.study_instance_uid_peek(data)  # "" for a malformed header: sealed under a key of its own
    return uid if len(uid) <= 64 and _UID.fullmatch(uid) else ""


def ingest_receive(
    *,
    source: str,
    batch: uuid.UUID,
    data: bytes,
    filename: str = "",
    actor: Any = None,
    device: Any = None,
    source_address: str | None = None,
    queue: bool = True,
    study_keys: dict[str, tuple[StudyKey, bytes]] | None = None,
) -> IngestItem:
    """Quarantine `data` and record it as received, in the current tenant. The caller has checked that the actor
    or device may send. Processing is queued when the transaction commits, unless `queue` is false: then the
    caller wakes the worker itself, by `ingest_wake` after the commit, at most a moment later (the DICOM listener
    wakes it once per short window of an association, not once per object: studies.net.scp). Never raises for bad
    content: that is the task's verdict, recorded on the item. `study_keys`: as for `ingest_quarantine`, a dict the
    caller keeps for one association or request, of the study keys already opened (one look-up per study).

    The Blob row and the IngestItem are written by one statement (`_receipt_insert`), which outside a caller's
    transaction commits on its own: one round trip per received object instead of four (BEGIN, two INSERTs,
    COMMIT), in the C-STORE's answer path."""
    tenant = current_tenant()
    if len(data) > settings.INGEST_MAX_BYTES:
        raise Rejected(
            f"The object is larger than the limit of {settings.INGEST_MAX_BYTES} bytes.",
            failure=IngestItem.Failure.TOO_LARGE,
        )
    ingest_quota_take(tenant=tenant, size=len(data))
    # Sealed under the study's key from the start when the header names a study, so that the worker can promote
    # this very ciphertext into the archive (studies.storage.blobs.blob_promote) instead of encrypting it again.
    quarantine = blob_seal(
        kind=Blob.Kind.QUARANTINE,
        data=data,
        replicate=False,
        study_instance_uid=_study_uid_hint(data),
        study_keys=study_keys,
        sync=False,  # its write-back runs while the receipt's statement does; synced before this returns
    )
    item = IngestItem(
        tenant=tenant,
        source=source,
        batch=batch,
        filename=filename[:255],
        size=len(data),
        sha256=quarantine.sha256,  # hashed in the pass that encrypted it
        quarantine=quarantine,
        actor=actor if getattr(actor, "pk", None) else None,
        device=device,
        source_address=source_address,
    )
    # Field rules only: the foreign keys were made or checked just above, and the public id is a fresh UUID, so
    # full_clean's look-ups of them (three SELECTs per received object) would prove nothing.
    item.clean_fields(exclude=["tenant", "quarantine", "actor", "device", "instance"])
    # On disk before the door answers (a C-STORE success follows this), synced on a thread while the receipt's
    # statement runs: the copy's write-out and the commit's WAL flush wait for the disk at the same time. A crash
    # before both have ended leaves either a copy without its receipt (the orphan job removes it) or an item whose
    # copy may be gone: the sender, never answered, sends it again, and the worker fails the unreadable one; a
    # worker that takes the item meanwhile syncs the copy again before it indexes it.
    with blob_files_synced_meanwhile([quarantine]):
        _receipt_insert(quarantine, item)
    if queue:
        task_queue_on_commit("studies.tasks.ingest_process", tenant_id=tenant.pk, item_id=item.pk)
    return item


def _receipt_insert(blob: Blob, item: IngestItem) -> None:
    """INSERT a new quarantine Blob row and its IngestItem in one statement (the item's `quarantine_id` is the
    blob's id, RETURNING from the first INSERT), and set both rows' ids. Neither model is tracked by
    django-auditlog (portal.settings: bookkeeping rows, the storing is on the AuditEvent trail) and neither has
    save() side effects beyond `TenantOwnedModel.save`'s scope checks, which are made here: both rows are of the
    current tenant, and the item's foreign keys point at rows of that tenant (the blob, just sealed; the actor's
    or device's, checked by the door). Values are prepared by each field as `Model.save` would
    (`pre_save`: `updated_at`; `get_db_prep_save`), so the row is the one save() would write.

    The statement's text and its fields are worked out once per database connection alias (`_receipt_statement`),
    and it runs as a prepared statement of its connection (`tenants.db.base.prepared_statements`): PostgreSQL
    parses and plans it once per connection, not once per received object."""
    tenant = current_tenant()
    if blob.tenant_id != tenant.pk or item.tenant_id != tenant.pk or blob.pk is not None or item.pk is not None:
        raise ValueError("_receipt_insert takes two new rows of the current tenant")
    if item.device is not None and item.device.tenant_id != tenant.pk:
        raise ValueError("the device belongs to another tenant")
    connection = transaction.get_connection()
    sql, blob_fields, item_fields = _receipt_statement(connection.alias)
    params = [f.get_db_prep_save(f.pre_save(blob, True), connection=connection) for f in blob_fields]
    params += [f.get_db_prep_save(f.pre_save(item, True), connection=connection) for f in item_fields]
    with prepared_statements(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        item.pk, blob.pk = cursor.fetchone()
    item.quarantine = blob
    for row in (blob, item):
        row._state.adding, row._state.db = False, connection.alias


@functools.cache
def _receipt_statement(alias: str) -> tuple[str, list[Any], list[Any]]:
    """`_receipt_insert`'s statement for the connection `alias`, and the fields whose values it takes, in order.
    The item's values are cast to their columns' types: in a SELECT list a parameter has no column to take its
    type from (a prepared statement would not know it)."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    blob_fields: list[Any] = [f for f in Blob._meta.concrete_fields if not f.primary_key]
    item_fields: list[Any] = [
        f for f in IngestItem._meta.concrete_fields if not f.primary_key and f.attname != "quarantine_id"
    ]
    names = ", ".join
    # Identifiers and types from the models' metadata, quoted; every value is a parameter.
    sql = (
        f"WITH b AS (INSERT INTO {quote(Blob._meta.db_table)} "  # noqa: S608 # nosec B608
        f"({names(quote(f.column) for f in blob_fields)}) "
        f"VALUES ({names(['%s'] * len(blob_fields))}) RETURNING id) "
        f"INSERT INTO {quote(IngestItem._meta.db_table)} "
        f"({names(quote(f.column) for f in item_fields)}, {quote('quarantine_id')}) "
        f"SELECT {names(f'%s::{f.db_type(connection)}' for f in item_fields)}, b.id FROM b "
        "RETURNING id, quarantine_id"
    )
    return sql, blob_fields, item_fields


def ingest_wake(*, tenant_id: int, item_id: int) -> None:
    """Queue the processing of received item `item_id` now, and with it of every item of its tenant still waiting
    (`ingest_process` claims the waiting items too): for a door that received several items and wakes the worker
    once for them, after their commits. An item whose wake-up is lost (the process died before it, Redis was
    flushed) stays `received`, and the sweeper queues it again, as it does for any lost message."""
    task_queue("studies.tasks.ingest_process", tenant_id=tenant_id, item_id=item_id)


def ingest_quarantine(
    *,
    data: bytes,
    study_instance_uid: str | None = None,
    study_keys: dict[str, tuple[StudyKey, bytes]] | None = None,
    behind: durable.Behind | None = None,
) -> Blob:
    """The first half of `ingest_receive` for a door that receives several objects at once (STOW-RS): check the
    size, count the bytes against the quota, and seal `data` into the current tenant's quarantine store. Returns
    the Blob row unsaved; `ingest_receive_many` writes it with its IngestItem. Until then nothing can open the
    ciphertext (its wrapped data key is only in the row), and if the rows are never written the orphan job
    removes it. `study_instance_uid` is the header's Study Instance UID when the door has read it already (one
    parse per object); else it is read here. `study_keys`: one dict per request, the study keys it opened (one
    look-up per study, not per object). `behind`: the copy is written on a thread while the door reads on
    (`durable.Behind`); the door waits for it before the receipt. Raises `Rejected` (too large, quota)."""
    tenant = current_tenant()
    if len(data) > settings.INGEST_MAX_BYTES:
        raise Rejected(
            f"The object is larger than the limit of {settings.INGEST_MAX_BYTES} bytes.",
            failure=IngestItem.Failure.TOO_LARGE,
        )
    ingest_quota_take(tenant=tenant, size=len(data))
    hint = _study_uid_hint(data) if study_instance_uid is None else study_instance_uid
    if len(hint) > 64 or not _UID.fullmatch(hint):
        hint = ""
    # On disk when its receipt is recorded (`ingest_receive_many`), with the request's others.
    return blob_seal(
        kind=Blob.Kind.QUARANTINE,
        data=data,
        replicate=False,
        study_instance_uid=hint,
        study_keys=study_keys,
        sync=False,
        behind=behind,
    )


def ingest_receive_many(
    *,
    source: str,
    batch: uuid.UUID,
    quarantined: list[tuple[Blob, str]],
    actor: Any = None,
    device: Any = None,
    source_address: str | None = None,
) -> list[IngestItem]:
    """Record objects sealed by `ingest_quarantine` (each with its filename) as received, in the current tenant:
    their Blob rows and IngestItems in one statement (`_receipts_insert`: all or none), in order. The caller has
    checked that the actor or device may send. One processing message is queued when the rows commit (as
    `ingest_wake` does: its task claims these items and any others waiting, batch after batch). Never raises for
    bad content: that is the task's verdict, recorded on the item."""
    tenant = current_tenant()
    if not quarantined:
        return []
    for blob, _ in quarantined:
        if blob.tenant_id != tenant.pk or blob.kind != Blob.Kind.QUARANTINE or blob.pk is not None:
            raise ValueError("ingest_receive_many takes this tenant's unsaved quarantine blobs")
    sender = actor if getattr(actor, "pk", None) else None
    items = [
        IngestItem(
            tenant=tenant,
            source=source,
            batch=batch,
            filename=filename[:255],
            size=blob.size,
            sha256=blob.sha256,  # hashed in the pass that encrypted it
            quarantine=blob,
            actor=sender,
            device=device,
            source_address=source_address,
        )
        for blob, filename in quarantined
    ]
    for item in items:
        # Field rules only, as in ingest_receive: the foreign keys were made or checked above.
        item.clean_fields(exclude=["tenant", "quarantine", "actor", "device", "instance"])
    # Sealed with sync=False: on disk before this returns (the door answers after it), synced on threads while the
    # receipt's statement runs and the worker is woken, as a C-STORE's copy is (`ingest_receive`): a worker may take
    # the items before the syncs end, and syncs a promoted copy again before it indexes it (`blob_promote`). A sync
    # that fails raises once the block ends: the request is not answered as stored, its receipt stands (the worker
    # processes it; the same instance sent again is stored once).
    with blob_files_synced_meanwhile([blob for blob, _ in quarantined]):
        _receipts_insert([(blob, item) for (blob, _), item in zip(quarantined, items, strict=True)])
        # A worker that waits for its next batch (`_gather_claim`) takes them at once, before the message below
        # reaches a worker: the signal first.
        _received_signal(tenant_id=tenant.pk)
        # One wake-up for them all, after the commit (at once outside a transaction: the statement committed): its
        # task claims the first item and the items waiting with it, a batch at a time (ingest_process); a lost
        # message leaves them `received` for the sweeper.
        task_queue_on_commit("studies.tasks.ingest_process", tenant_id=tenant.pk, item_id=items[0].pk)
    return items


def _receipts_insert(rows: list[tuple[Blob, IngestItem]]) -> None:
    """INSERT new quarantine Blob rows and their IngestItems in one statement, and set every row's id: the blobs
    from one INSERT, the items from a second that takes each blob's id (RETURNING from the first) by the blob's
    public id, as `_receipt_insert` does for one pair. One statement, so all the rows or none, without a
    transaction of its own (BEGIN, two INSERTs and COMMIT were four round trips, each INSERT compiled by
    bulk_create: 0.75-0.82 ms of CPU per instance for a receipt of 10 parts, 0.54-0.77 now; docs/BENCHMARKS.md
    "STOW-RS pipelined within a request"). The scope checks of `TenantOwnedModel.save` are made here, as there; values
    are prepared by each field as `Model.save` would. The items' values are cast to their columns' types (a
    VALUES list in a SELECT has no target column to take them from)."""
    tenant = current_tenant()
    for blob, item in rows:
        if blob.tenant_id != tenant.pk or item.tenant_id != tenant.pk or blob.pk is not None or item.pk is not None:
            raise ValueError("_receipts_insert takes new rows of the current tenant")
        if item.device is not None and item.device.tenant_id != tenant.pk:
            raise ValueError("the device belongs to another tenant")
        if item.quarantine is not blob:
            raise ValueError("each item's quarantine is its blob")
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    blob_fields = [f for f in Blob._meta.concrete_fields if not f.primary_key]
    item_fields = [f for f in IngestItem._meta.concrete_fields if not f.primary_key and f.attname != "quarantine_id"]

    def values(obj: Any, fields: list[Any]) -> list[Any]:
        return [f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for f in fields]

    blob_marks = "(" + ", ".join(["%s"] * len(blob_fields)) + ")"
    # The blob's public id last: it names the blob whose id the item takes.
    item_marks = "(" + ", ".join([f"%s::{f.db_type(connection)}" for f in item_fields] + ["%s::uuid"]) + ")"
    names = ", ".join
    blob_columns = names(quote(f.column) for f in blob_fields)
    item_columns = names(quote(f.column) for f in item_fields)
    item_aliases = names(f"c{i}" for i in range(len(item_fields)))
    # Identifiers from the models' metadata, quoted; every value is a parameter.
    sql = (
        f"WITH b AS (INSERT INTO {quote(Blob._meta.db_table)} ({blob_columns}) "  # noqa: S608 # nosec B608
        f"VALUES {names([blob_marks] * len(rows))} RETURNING id, public_id) "
        f"INSERT INTO {quote(IngestItem._meta.db_table)} ({item_columns}, {quote('quarantine_id')}) "
        f"SELECT {names(f'v.c{i}' for i in range(len(item_fields)))}, b.id "
        f"FROM (VALUES {names([item_marks] * len(rows))}) AS v ({item_aliases}, q) JOIN b ON b.public_id = v.q "
        "RETURNING id, quarantine_id, public_id"
    )
    params: list[Any] = []
    for blob, _ in rows:
        params += values(blob, blob_fields)
    for blob, item in rows:
        params += [*values(item, item_fields), blob.public_id]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        made = {public_id: (pk, blob_pk) for pk, blob_pk, public_id in cursor.fetchall()}
    if len(made) != len(rows):  # cannot happen (public ids are unique): never a receipt short of an item
        raise RuntimeError("the receipt did not record every item")
    for blob, item in rows:
        item.pk, blob.pk = made[item.public_id]
        item.quarantine = blob
        for row in (blob, item):
            row._state.adding, row._state.db = False, connection.alias


# Process
# ------------------------------------------------------------------------------


def _claim_batch(item_id: int | None) -> list[int]:
    """Claim item `item_id` if nobody holds it (`received`, or `processing` claimed too long ago: its worker died),
    and if that succeeds, with it up to INGEST_BATCH_SIZE - 1 other `received` items of the tenant (oldest first,
    at most INGEST_BATCH_BYTES in all), each by compare-and-set: exactly one caller wins each item. The items a busy
    worker finds waiting become one batch, so batches grow with the load and an idle worker still takes a lone
    item at once. With `item_id` None: up to INGEST_BATCH_SIZE waiting items, oldest first. Returns the claimed
    ids (maybe none), `item_id` first.

    One statement (`_claim_statement`), prepared once per connection, where the ORM sent up to five (the item's
    UPDATE, then BEGIN, a SELECT ... FOR UPDATE SKIP LOCKED, an UPDATE and COMMIT), each compiled anew: a fixed
    cost of every batch and of the empty claim that ends a task (docs/BENCHMARKS.md, h2 branch, session 6).
    Pipeline bookkeeping, as before: no django-auditlog entry (what each item became is its audit event)."""
    room = settings.INGEST_BATCH_SIZE - (0 if item_id is None else 1)
    if item_id is None and room <= 0:
        return []
    now = timezone.now()
    received, processing = IngestItem.State.RECEIVED, IngestItem.State.PROCESSING
    tenant_id = current_tenant().pk
    params: list[Any] = []
    if item_id is not None:
        stale = now - timedelta(seconds=settings.INGEST_STALE_SECONDS)
        params += [processing, now, tenant_id, item_id, received, processing, stale]  # mine
        params += [tenant_id, received, item_id, max(room, 0)]  # waiting
    else:
        params += [tenant_id, received, room]  # waiting
    params += [processing, now, settings.INGEST_BATCH_BYTES, received]  # taken
    with prepared_statements(), transaction.get_connection().cursor() as cursor:
        cursor.execute(_claim_statement(first=item_id is not None), params)
        claimed = [pk for (pk,) in cursor.fetchall()]
    if item_id is None:
        return sorted(claimed)
    return [item_id, *sorted(pk for pk in claimed if pk != item_id)] if item_id in claimed else []


@functools.cache
def _claim_statement(*, first: bool) -> str:
    """`_claim_batch`'s statement. With `first`, the item's own compare-and-set UPDATE (`mine`), and the waiting
    items only if it took the item; the waiting items locked oldest first, skipping those another worker holds
    locked (FOR UPDATE SKIP LOCKED under the LIMIT, so the skipped ones do not count against it), cut at the byte
    budget by a running sum (a window function, which PostgreSQL does not allow beside FOR UPDATE: hence a CTE
    between them), and set to `processing` only if still `received`. So, as with the ORM's statements: an item is
    locked (or skipped) before it is taken and each UPDATE takes only rows still in the state it expects, so two
    workers never take one item; a `processing` item is taken again only by its own message, and only when its
    claim is older than INGEST_STALE_SECONDS (a claim that outlived its worker), never because it waited. Names
    from the model's metadata, quoted; every value a parameter (the tenant's id among them: the ORM's scope,
    written out, beside the database's row-level security).

    The items taken are named to the UPDATE as an array of ids (`id = ANY(ARRAY(...))`, found by the primary key),
    not joined to it: planned on statistics older than a backlog (a new tenant's first load, autovacuum not yet
    come by), the join read every waiting item of the tenant once per item taken, 100 ms per claim of 50 with
    2,000 waiting, its cost growing with the square of the backlog (docs/BENCHMARKS.md, session 14)."""
    q = transaction.get_connection().ops.quote_name
    table = q(IngestItem._meta.db_table)
    pk, tenant, state, size, claimed_at = q("id"), q("tenant_id"), q("state"), q("size"), q("claimed_at")
    claim = f"{state} = %s, {claimed_at} = %s, {q('attempts')} = {table}.{q('attempts')} + 1"
    gate = f" AND {pk} <> %s AND EXISTS (SELECT FROM mine)" if first else ""  # nosec B608
    mine = (
        f"mine AS (UPDATE {table} SET {claim} WHERE {tenant} = %s AND {pk} = %s AND ({state} = %s "  # noqa: S608 # nosec B608
        f"OR ({state} = %s AND {claimed_at} < %s)) RETURNING {pk}), "
    )
    result = 'SELECT "id" FROM mine UNION ALL SELECT "id" FROM taken' if first else 'SELECT "id" FROM taken'
    return (
        f"WITH {mine if first else ''}"  # noqa: S608 # nosec B608
        f"waiting AS (SELECT {pk}, {size} FROM {table} WHERE {tenant} = %s AND {state} = %s{gate} "
        f"ORDER BY {pk} LIMIT %s FOR UPDATE SKIP LOCKED), "
        f"taken AS (UPDATE {table} SET {claim} WHERE {table}.{pk} = ANY(ARRAY(SELECT w.{pk} FROM (SELECT {pk}, "
        f"sum({size}) OVER (ORDER BY {pk}) AS total, row_number() OVER (ORDER BY {pk}) AS n FROM waiting) AS w "
        f"WHERE w.n = 1 OR w.total <= %s)) AND {table}.{state} = %s RETURNING {table}.{pk}) "
        f"{result}"
    )


@dataclass(frozen=True)
class Verdict:
    data: bytes
    parsed: dicom_parse.ParsedInstance
    preamble_zeroed: bool


def _check(data: bytes) -> Verdict:
    """Every check an object passes before it may enter the archive, cheapest first. The scanner sees the whole
    object; the parser walks its whole structure and converts every value it checks, indexes or would hash. The
    content hash itself (a SHA-256 over the pixel data) is not taken here: it is needed only when the SOP Instance
    UID is already stored (`_resolve_existing`), and the stored instance gets its own then too."""
    verdict = dicom_preamble.inspect_preamble(data)
    if verdict.kind == "executable":
        raise Rejected(
            f"Suspected malware: the DICOM preamble holds an executable header ({verdict.detail}).",
            failure=IngestItem.Failure.MALWARE,
        )
    result = scanning.scan(data, address=settings.CLAMD_ADDRESS or None)
    if not result.clean:
        raise Rejected(f"Malware found by the virus scanner ({result.signature}).", failure=IngestItem.Failure.MALWARE)
    try:
        # The data set read by pydicom up to its pixel data, which the checks read off the walked file instead
        # (without copying 0.5 MB per CT): the same verdict (studies.dicom.parse.parse, `pixels`).
        parsed, _ = dicom_parse.parse(data, limits=ingest_limits(), hashed=False, pixels=False)
    except dicom_parse.InvalidDicom as exc:
        raise Rejected(exc.reason, failure=exc.kind) from exc
    zeroed = verdict.kind == "nonzero"
    if zeroed:
        data = dicom_preamble.zero_preamble(data)
    return Verdict(data=data, parsed=parsed, preamble_zeroed=zeroed)


@dataclass
class _Checked:
    """An item that passed every check, with the ciphertext of its quarantine copy (promoted as it is)."""

    item: IngestItem
    verdict: Verdict
    sealed: bytes
    instance: Instance | None = dataclass_field(default=None)


# What processing reads of an item: its quarantined blob with the study key that wraps it (the key's id decides
# whether the ciphertext is promoted as it is: `blob_promotable`; read here, not in a SELECT of its own per batch),
# and the sender.
_ITEM_RELATED = ("quarantine__study_key", "actor", "device")


def _item(item_id: int) -> IngestItem:
    return IngestItem.objects.select_related(*_ITEM_RELATED).get(pk=item_id)


def ingest_process(*, item_id: int) -> IngestItem | None:
    """Run item `item_id`, and the other received items waiting with it (`_claim_batch`), through every check
    into the archive. Idempotent: an item that another worker holds or has finished is left alone; returns item
    `item_id` with its verdict, or None when it was not this call's to process.

    Side effects, per batch: the instance blobs in the primary and replica stores (the quarantined ciphertext,
    promoted), Patient/Study/Series rows for new ones, the Instance rows in one INSERT, each series' and study's
    counts once, one INSTANCES_STORED audit event per study (and sender) with every instance in it, a thumbnail
    task for a new series; per refused item, as before: an INGEST_REJECTED event, and for malware a SecurityAlert.
    One item's failure never fails the others: each is checked alone, and a batch whose storing fails is stored
    again item by item.

    After its first batch, the call goes on claiming the items that wait, a batch at a time, until none does or it
    has run INGEST_BATCH_ROUNDS batches (then it queues a message for the rest); after a batch short of
    INGEST_BATCH_SIZE it first waits INGEST_GATHER_SECONDS, so that a stream's next objects make one batch (the
    first batch is taken at once: a lone item waits for nothing): a door may wake the worker once
    for many items (`ingest_wake`), and no item is left behind a message whose own item an earlier batch took.
    A message whose own item is taken still claims what waits: after a scanner outage, the retried message of a
    batch finds the items that batch gave back."""
    ids = _claim_batch(item_id)
    if not ids:
        ids = _claim_batch(None)
        if not ids:
            return None
    mine = _process_claimed(ids).get(item_id)
    taken = len(ids)
    tenant_id = current_tenant().pk
    for _ in range(settings.INGEST_BATCH_ROUNDS - 1):
        if taken < settings.INGEST_BATCH_SIZE and settings.INGEST_GATHER_SECONDS > 0:
            # A batch short of full: the door is still sending, or done. Let its next objects gather for a moment
            # before the next claim, so that they make one batch and not many of one or two: a batch's fixed cost
            # (its claim, look-ups, counts, audit event and commit) was most of the worker's CPU per instance when
            # it kept up with one association (6-10 ms of CPU per CT instead of 5-6 ms in batches of 5 and more).
            # A door that records a whole request's objects at once (STOW-RS) ends the wait when they commit.
            more = _gather_claim(tenant_id=tenant_id, seconds=settings.INGEST_GATHER_SECONDS)
        else:
            more = _claim_batch(None)
        if not more:
            return mine
        _process_claimed(more)
        taken = len(more)
    waiting = IngestItem.objects.filter(state=IngestItem.State.RECEIVED).order_by("pk").values_list("pk", flat=True)
    if (next_id := waiting.first()) is not None:
        ingest_wake(tenant_id=tenant_id, item_id=next_id)
    return mine


def _gather_claim(*, tenant_id: int, seconds: float) -> list[int]:
    """The next batch after a short one: what waits once `seconds` have passed, or at once when a door signals a
    receipt of the tenant before that (`_received_signal`: a STOW-RS request's objects, already one batch). A signal
    whose objects another worker took, or one left from a receipt this worker has processed, finds nothing to claim:
    the wait then goes on to the end of `seconds`. Without Redis, or with the signal lost, it is the plain wait it
    was, and the Celery message each receipt queues still reaches a worker."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if _received_wait(tenant_id=tenant_id, timeout=remaining) and (more := _claim_batch(None)):
            return more
    return _claim_batch(None)


def _process_claimed(ids: list[int]) -> dict[int, IngestItem]:
    tenant = current_tenant()
    items = list(IngestItem.objects.select_related(*_ITEM_RELATED).filter(pk__in=ids).order_by("pk"))
    done: dict[int, IngestItem] = {}
    checked: list[_Checked] = []
    for item in items:
        try:
            checked.append(_checked(item))
        except Rejected as exc:
            _reject(item, exc)
            done[item.pk] = item
        except scanning.ScanError:
            # The scanner is down: a scan that did not happen never counts as clean. Give every item not yet
            # decided back, so that a retry, or the sweeper, can take them again.
            undecided = [i.pk for i in items if i.pk not in done]
            IngestItem.objects.filter(pk__in=undecided, state=IngestItem.State.PROCESSING).update(
                state=IngestItem.State.RECEIVED, reason="waiting for the malware scanner", claimed_at=None
            )
            raise
        except Exception as exc:
            done[item.pk] = _fail(item.pk, exc)
    if checked:
        done.update(_store_all(checked, tenant))
    _verdicts_signal(done.values())
    return done


def _checked(item: IngestItem) -> _Checked:
    if item.attempts > settings.INGEST_MAX_ATTEMPTS:
        # Claimed again and again without a verdict: each worker that took it died on the way.
        raise Rejected(
            f"Processing was given up after {item.attempts - 1} attempts that did not finish; the object is "
            "kept in quarantine for review.",
            failure=IngestItem.Failure.INTERNAL,
        )
    if item.quarantine is None:
        raise Rejected("The received bytes are gone from quarantine.", failure=IngestItem.Failure.LOST)
    try:
        sealed, data = blob_read_sealed(blob=item.quarantine)
    except BlobUnreadable as exc:
        raise Rejected("The received bytes in quarantine are damaged.", failure=IngestItem.Failure.LOST) from exc
    return _Checked(item=item, verdict=_check(data), sealed=sealed)


def _fail(item_id: int, exc: Exception) -> IngestItem:
    """A fault of ours, not of the object: the item is rejected (not left `processing` for the sweeper to hand to
    the next worker, which would fail the same way), and the sender is told. The log names the class and the item
    only: exception messages may quote values of the data set."""
    item = _item(item_id)
    logger.error("ingest item %s failed unexpectedly (%s)", item.public_id, type(exc).__name__)
    _reject(
        item,
        Rejected(
            f"An internal error stopped processing ({type(exc).__name__}); the object is kept in quarantine "
            f"for review (ingest item {item.public_id}).",
            failure=IngestItem.Failure.INTERNAL,
        ),
    )
    return item


def _store_all(checked: list[_Checked], tenant: Tenant) -> dict[int, IngestItem]:
    """Store the batch in one transaction; if that fails (another worker inserted one of its instances or series
    first, a deadlock, any fault), store its items one by one, so that one item's trouble is its own. Items that
    repeat a SOP Instance UID of the same batch are stored after it, and so become duplicates or conflicts."""
    try:
        with transaction.atomic(), durable.together():  # the batch's copies on disk before it commits
            done, later = _store_batch(checked, tenant)
    except Exception as exc:
        logger.warning("an ingest batch of %d items is stored item by item (%s)", len(checked), type(exc).__name__)
        done, later = {}, checked
    for one in later:
        done[one.item.pk] = _store_one(one, tenant)
    return done


def _store_one(one: _Checked, tenant: Tenant) -> IngestItem:
    item_id = one.item.pk
    try:
        # Read again: a batch that rolled back left its changes on the objects in memory.
        again = _Checked(item=_item(item_id), verdict=one.verdict, sealed=one.sealed)
        try:
            with transaction.atomic(), durable.together():
                done, _ = _store_batch([again], tenant)
            return done[item_id]
        except IntegrityError:
            # Another worker stored the same SOP Instance UID between our look and our insert.
            item = _item(item_id)
            existing = Instance.objects.get(sop_instance_uid=one.verdict.parsed.sop_instance_uid)
            with transaction.atomic():
                return _resolve_existing(item, existing, one.verdict)
    except Exception as exc:
        return _fail(item_id, exc)


def _store_batch(checked: list[_Checked], tenant: Tenant) -> tuple[dict[int, IngestItem], list[_Checked]]:
    """In the caller's transaction: the blobs, the index rows, the counts, the items' verdicts and the audit
    events of a batch. Returns the decided items, and the items left for later (a SOP Instance UID repeated
    within the batch)."""
    uids = [one.verdict.parsed.sop_instance_uid for one in checked]
    existing = {i.sop_instance_uid: i for i in Instance.objects.filter(sop_instance_uid__in=uids)}
    fresh: list[_Checked] = []
    again: list[_Checked] = []
    later: list[_Checked] = []
    seen: set[str] = set()
    for one in checked:
        uid = one.verdict.parsed.sop_instance_uid
        if uid in existing:
            again.append(one)
        elif uid in seen:
            later.append(one)
        else:
            seen.add(uid)
            fresh.append(one)
    done: dict[int, IngestItem] = {}
    if fresh:
        _blobs_and_rows(fresh, tenant)
        done.update((one.item.pk, one.item) for one in fresh)
    # Duplicates and conflicts after the counts: every lock of a batch is taken in one order (series, studies,
    # then the audit chain), so two batches never wait on each other in a cycle.
    for one in again:
        done[one.item.pk] = _resolve_existing(one.item, existing[one.verdict.parsed.sop_instance_uid], one.verdict)
    if fresh:
        _stored_events(fresh, tenant)
    return done, later


def _blobs_and_rows(fresh: list[_Checked], tenant: Tenant) -> None:
    now = timezone.now()
    key_ids = blob_study_key_ids([one.item.quarantine for one in fresh if one.item.quarantine is not None])
    promoted: list[Blob] = []
    released: list[Blob] = []
    blobs: list[Blob] = []
    for one in fresh:
        quarantine, parsed = one.item.quarantine, one.verdict.parsed
        assert quarantine is not None
        if not one.verdict.preamble_zeroed and blob_promotable(
            blob=quarantine, study_instance_uid=parsed.study_instance_uid, key_ids=key_ids
        ):
            # The checked ciphertext enters the archive as it is: no decryption or encryption again.
            blob_promote(blob=quarantine, sealed=one.sealed)
            quarantine.updated_at = now
            promoted.append(quarantine)
            blobs.append(quarantine)
        else:
            # Zeroed preamble (other bytes), or sealed under another key at receipt: encrypted anew.
            blobs.append(
                blob_write(kind=Blob.Kind.INSTANCE, data=one.verdict.data, study_instance_uid=parsed.study_instance_uid)
            )
            released.append(quarantine)
    series, new_series = _series_for(fresh, tenant)
    instances = [
        Instance(
            tenant=tenant,
            series=series[one.verdict.parsed.series_instance_uid],
            sop_instance_uid=one.verdict.parsed.sop_instance_uid,
            sop_class_uid=one.verdict.parsed.sop_class_uid,
            transfer_syntax_uid=one.verdict.parsed.transfer_syntax_uid,
            instance_number=one.verdict.parsed.instance_number,
            rows=one.verdict.parsed.rows or None,
            columns=one.verdict.parsed.columns or None,
            frames=one.verdict.parsed.frames or 1,
            size=len(one.verdict.data),
            sha256=blob.sha256,
            content_sha256=one.verdict.parsed.content_sha256,
            blob=blob,
        )
        for one, blob in zip(fresh, blobs, strict=True)
    ]
    Instance.objects.bulk_create(instances)
    if promoted:
        # The promoted blobs in one UPDATE: the name per row, the replication outcome per row only when the batch
        # has both (Django's bulk_update builds a CASE per row and field: most of a batch's Python time when every
        # field went through it).
        replicated = [blob.pk for blob in promoted if blob.replicated_at is not None]
        replicated_at: Any = now if len(replicated) == len(promoted) else None
        if replicated and replicated_at is None:
            replicated_at = Case(When(pk__in=replicated, then=Value(now)), default=None, output_field=DateTimeField())
        Blob.objects.filter(pk__in=[blob.pk for blob in promoted]).update(
            kind=Blob.Kind.INSTANCE,
            storage_name=_per_row({blob.pk: blob.storage_name for blob in promoted}, CharField()),
            replicated_at=replicated_at,
            updated_at=now,
        )
    for one, instance in zip(fresh, instances, strict=True):
        item = one.item
        one.instance = instance
        item.state, item.failure, item.finished_at, item.updated_at = IngestItem.State.STORED, "", now, now
        item.reason = "preamble zeroed" if one.verdict.preamble_zeroed else ""
        item.instance, item.sop_instance_uid, item.quarantine = instance, instance.sop_instance_uid, None
    # Every item's verdict in one UPDATE, with the values just set on the objects. (Not a subquery per row for its
    # instance: under the policy and with statistics older than the tenant's rows, PostgreSQL read that through
    # the tenant index, every instance of the tenant for each item: docs/BENCHMARKS.md, h5 branch, session 3.)
    zeroed = [one.item.pk for one in fresh if one.verdict.preamble_zeroed]
    instance_of = {one.item.pk: instance.pk for one, instance in zip(fresh, instances, strict=True)}
    IngestItem.objects.filter(pk__in=[one.item.pk for one in fresh]).update(
        state=IngestItem.State.STORED,
        reason=_per_row(dict.fromkeys(zeroed, "preamble zeroed"), CharField(), default="") if zeroed else "",
        failure="",
        finished_at=now,
        updated_at=now,
        instance=_per_row(instance_of, BigIntegerField()),
        sop_instance_uid=_per_row({one.item.pk: one.item.sop_instance_uid for one in fresh}, CharField()),
        quarantine=None,
    )
    for quarantine in released:
        blob_delete(blob=quarantine)
    added: dict[int, int] = defaultdict(int)
    for instance in instances:
        added[instance.series_id] += 1
    before = {one_series.pk: one_series.number_of_instances for one_series in series.values()}
    _counts_add(series=[s for s in series.values() if s.pk in added], added=added, new_series=new_series)
    for one_series in series.values():
        if one_series.pk in added and _thumbnail_due(
            one_series, before=before[one_series.pk], added=added[one_series.pk], new=one_series.pk in new_series
        ):
            task_queue_on_commit("studies.tasks.series_thumbnail", tenant_id=tenant.pk, series_id=one_series.pk)


class _PerRow(Expression):
    """`CASE <primary key> WHEN <pk> THEN <value> ... ELSE <default> END`: each row of an UPDATE gets its own value
    (`values`: pk -> value). The values Django's `Case(When(pk=..., then=Value(...)), ...)` gives each row, compiled
    without resolving a filter per row: that cost about 0.15 ms of the worker's CPU per row and field, three fields
    per stored instance (process_time, docs/BENCHMARKS.md, h3 branch, session 4). Values are prepared by the
    output field and cast to its column type."""

    def __init__(self, values: dict[int, Any], output_field: Field[Any, Any], default: Any = None) -> None:
        super().__init__(output_field=output_field)
        self.values, self.default = values, default
        self.pk: Any = None

    def resolve_expression(
        self, query: Any = None, allow_joins: bool = True, reuse: Any = None, summarize: bool = False,
        for_save: bool = False,
    ) -> _PerRow:  # fmt: skip
        resolved = self.copy()
        resolved.pk = F("pk").resolve_expression(query, allow_joins, reuse, summarize, for_save)
        return resolved

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        field = self.output_field
        cast = field.cast_db_type(connection)
        column, params = compiler.compile(self.pk)
        params = list(params)
        whens = []
        for pk, value in self.values.items():
            whens.append(f"WHEN %s THEN CAST(%s AS {cast})")
            params += [pk, field.get_db_prep_value(value, connection, prepared=False)]
        if self.default is None:
            default = "NULL"
        else:
            default = f"CAST(%s AS {cast})"
            params.append(field.get_db_prep_value(self.default, connection, prepared=False))
        return f"CASE {column} {' '.join(whens)} ELSE {default} END", tuple(params)


def _per_row(values: dict[int, Any], output_field: Field[Any, Any], default: Any = None) -> _PerRow:
    return _PerRow(values, output_field, default)


def _series_for(fresh: list[_Checked], tenant: Tenant) -> tuple[dict[str, Series], set[int]]:
    """The series of a batch by UID, with their studies and patients: one SELECT for those that exist; for the
    new ones, one SELECT each for the batch's studies and patients that exist, and an INSERT for each new
    patient, study and series (no look-up of each first: a batch of small instances makes one series per few
    instances). The second value holds the pks of the new series."""
    uids = {one.verdict.parsed.series_instance_uid for one in fresh}
    series = {
        s.series_instance_uid: s
        for s in Series.objects.select_related("study__patient").filter(tenant=tenant, series_instance_uid__in=uids)
    }
    missing = [one.verdict.parsed for one in fresh if one.verdict.parsed.series_instance_uid not in series]
    new: set[int] = set()
    if not missing:
        return series, new
    studies = {
        s.study_instance_uid: s
        for s in Study.objects.select_related("patient").filter(
            tenant=tenant, study_instance_uid__in={parsed.study_instance_uid for parsed in missing}
        )
    }
    patients = {
        p.patient_id: p
        for p in Patient.objects.filter(
            tenant=tenant, issuer="", patient_id__in={parsed.patient_id for parsed in missing}
        )
    }
    for parsed in missing:
        if parsed.series_instance_uid in series:
            continue
        created = _series_create(tenant=tenant, parsed=parsed, studies=studies, patients=patients)
        series[parsed.series_instance_uid] = created
        new.add(created.pk)
    return series, new


def _create_or_get(model: Any, *, lookup: dict[str, Any], defaults: dict[str, Any]) -> Any:
    """Insert a row the caller found missing; if another worker inserted the same unique key meanwhile (the
    INSERT fails, in a savepoint of its own), read that one."""
    try:
        with transaction.atomic():
            return model.objects.create(**lookup, **defaults)
    except IntegrityError:
        return model.objects.get(**lookup)


def _series_create(
    *, tenant: Tenant, parsed: dicom_parse.ParsedInstance, studies: dict[str, Study], patients: dict[str, Patient]
) -> Series:
    """A new series, with its study and patient unless `studies` / `patients` (the batch's existing ones, and
    those this batch created, added to them) hold them."""
    study = studies.get(parsed.study_instance_uid)
    if study is None:
        patient = patients.get(parsed.patient_id)
        if patient is None:
            patient = patients[parsed.patient_id] = _create_or_get(
                Patient,
                lookup={"tenant": tenant, "patient_id": parsed.patient_id, "issuer": ""},
                defaults={
                    "name": parsed.patient_name,
                    "birth_date": parsed.patient_birth_date,
                    "sex": parsed.patient_sex,
                },
            )
        study = studies[parsed.study_instance_uid] = _create_or_get(
            Study,
            lookup={"tenant": tenant, "study_instance_uid": parsed.study_instance_uid},
            defaults={
                "patient": patient,
                "study_date": parsed.study_date,
                "study_time": parsed.study_time,
                "accession_number": parsed.accession_number,
                "description": parsed.study_description,
                "referring_physician": parsed.referring_physician,
                "referring_physician_key": person_name_key(parsed.referring_physician),
            },
        )
    return _create_or_get(
        Series,
        lookup={"tenant": tenant, "series_instance_uid": parsed.series_instance_uid},
        defaults={
            "study": study,
            "modality": parsed.modality,
            "description": parsed.series_description,
            "series_number": parsed.series_number,
        },
    )


def _counts_add(*, series: list[Series], added: dict[int, int], new_series: set[int]) -> None:
    """Add a batch's instances to its series' and studies' counts, once per series and per study, in the
    transaction that inserts them.

    Each count is an increment in one UPDATE (`F() + n`): the row lock that statement takes makes concurrent
    increments add up, so no recount and no SELECT ... FOR UPDATE is needed. Rows are locked in one order (the
    series by pk, then the studies by pk), so two batches never wait on each other in a cycle. Only a new series
    changes its study's series count and modalities, which are then computed from the rows under the study's row
    lock (taken first, so that the statements after it see every series committed before it).

    These are queryset updates, so django-auditlog records no change for them: the counts are derived from the
    Instance rows, each of which is in the INSTANCES_STORED event of its storing. A batch into one series that
    exists (a stream of one series: most batches) adds to both counts in one statement (`_counts_add_one`)."""
    now = timezone.now()
    if len(series) == 1 and not new_series:
        _counts_add_one(series=series[0], added=added[series[0].pk], now=now)
        return
    per_study: dict[int, int] = defaultdict(int)
    studies_with_new_series: set[int] = set()
    for one in sorted(series, key=lambda s: s.pk):
        Series.objects.filter(pk=one.pk).update(
            number_of_instances=F("number_of_instances") + added[one.pk], updated_at=now
        )
        per_study[one.study_id] += added[one.pk]
        if one.pk in new_series:
            studies_with_new_series.add(one.study_id)
    for study_id in sorted(per_study):
        count = per_study[study_id]
        if study_id not in studies_with_new_series:
            Study.objects.filter(pk=study_id).update(
                number_of_instances=F("number_of_instances") + count, updated_at=now
            )
            continue
        Study.objects.select_for_update().filter(pk=study_id).values_list("pk", flat=True).get()
        # Every series of the study, once: their modalities, and how many there are.
        of_series = list(Series.objects.filter(study_id=study_id).values_list("modality", flat=True))
        Study.objects.filter(pk=study_id).update(
            number_of_instances=F("number_of_instances") + count,
            number_of_series=len(of_series),
            modalities="\\".join(sorted({m for m in of_series if m}))[:64],
            updated_at=now,
        )


def _counts_add_one(*, series: Series, added: int, now: Any) -> None:
    """`_counts_add` for one series that exists, in one prepared statement: the series' increment (a CTE), then
    its study's, in that order (the study's UPDATE reads the series' RETURNING), so the rows are locked series
    first, as `_counts_add` locks them. Two ORM UPDATEs, each compiled anew, were a fixed cost of every batch
    (docs/BENCHMARKS.md, h2 branch, session 6). Names from the models' metadata, quoted; every value a parameter
    (the tenant's id among them: the ORM's scope, written out, beside the database's row-level security)."""
    q = transaction.get_connection().ops.quote_name
    count, updated, tenant, pk = q("number_of_instances"), q("updated_at"), q("tenant_id"), q("id")
    series_table, study_table = q(Series._meta.db_table), q(Study._meta.db_table)
    statement = (
        f"WITH s AS (UPDATE {series_table} SET {count} = {series_table}.{count} + %s, {updated} = %s "  # noqa: S608 # nosec B608
        f"WHERE {tenant} = %s AND {pk} = %s RETURNING {q('study_id')}) "
        f"UPDATE {study_table} SET {count} = {study_table}.{count} + %s, {updated} = %s "
        f"WHERE {tenant} = %s AND {pk} = (SELECT {q('study_id')} FROM s)"
    )
    tenant_id = current_tenant().pk
    with prepared_statements(), transaction.get_connection().cursor() as cursor:
        cursor.execute(statement, [added, now, tenant_id, series.pk, added, now, tenant_id])
        if cursor.rowcount != 1:  # the series or its study is gone or hidden: never a batch counted short
            raise Series.DoesNotExist(f"series {series.pk} or its study could not be counted")


def study_counts_refresh(*, study_id: int) -> None:
    """Recount a study's and its series' counts and modalities from the rows, under the study's row lock: for
    repairs and for code that removes instances (ingestion only ever adds, see `_counts_add`)."""
    with transaction.atomic():
        Study.objects.select_for_update().filter(pk=study_id).values_list("pk", flat=True).get()
        now = timezone.now()
        for series_id in Series.objects.filter(study_id=study_id).values_list("pk", flat=True):
            Series.objects.filter(pk=series_id).update(
                number_of_instances=Instance.objects.filter(series_id=series_id).count(), updated_at=now
            )
        modalities = sorted(
            {m for m in Series.objects.filter(study_id=study_id).values_list("modality", flat=True) if m}
        )
        Study.objects.filter(pk=study_id).update(
            number_of_series=Series.objects.filter(study_id=study_id).count(),
            number_of_instances=Instance.objects.filter(series__study_id=study_id).count(),
            modalities="\\".join(modalities)[:64],
            updated_at=now,
        )


def _stored_events(fresh: list[_Checked], tenant: Tenant) -> None:
    """One INSTANCES_STORED event (DICOM "Instances Transferred") per study and sender in the batch: the study as
    its target, the patient and the study as participants, the study's entry listing every SOP Instance UID and
    the count per SOP class (as the DICOM audit message's ParticipantObjectDescription does), and the public ids
    of the Instance rows in `extra`."""
    groups: dict[tuple[Any, ...], list[_Checked]] = defaultdict(list)
    for one in fresh:
        item = one.item
        assert one.instance is not None
        key = (one.instance.series.study_id, item.actor_id, item.device_id, item.source, item.source_address,
               item.batch)  # fmt: skip
        groups[key].append(one)
    for members in groups.values():
        first = members[0]
        assert first.instance is not None
        study = first.instance.series.study
        instances = [one.instance for one in members if one.instance is not None]
        sop_classes: dict[str, int] = defaultdict(int)
        for instance in instances:
            sop_classes[instance.sop_class_uid] += 1
        participants = [
            participant({"type": "patient", "id": study.patient.patient_id, "name": study.patient.name}),
            participant(
                {
                    "type": "study",
                    "id": study.study_instance_uid,
                    "detail": {
                        "accession": study.accession_number,
                        "sop_class": instances[0].sop_class_uid,
                        "sop_classes": dict(sop_classes),
                        "instances": [instance.sop_instance_uid for instance in instances],
                    },
                }
            ),
        ]
        audit_event_record(
            event=EventType.INSTANCES_STORED,
            actor=first.item.actor,
            tenant=tenant,  # the batch's (and so the study's), not read again through the study's foreign key
            target=study,
            participants=participants,
            system_principal=_principal(first.item),
            source_address=first.item.source_address,
            extra={
                "source": first.item.source,
                "batch": str(first.item.batch),
                "count": len(instances),
                "bytes": sum(instance.size for instance in instances),
                "instances": [str(instance.public_id) for instance in instances],
            },
        )


def _thumbnail_due(series: Series, *, before: int, added: int, new: bool) -> bool:
    """Queue the thumbnail task for a new series, and again for a series still without one when its count
    passes a power of two (2, 4, 8, ...): a series whose first instances cannot be drawn still gets one, at a
    cost of a few tasks per series rather than one per instance or batch."""
    if new:
        return True
    if series.thumbnail_id is not None:
        return False
    return any(count & (count - 1) == 0 for count in range(before + 1, before + added + 1))


def _principal(item: IngestItem) -> str:
    if item.device is not None:
        return f"dicom:{item.device.ae_title}"
    return "" if item.actor is not None else f"enclave:{item.source}"


def _stored_content_hash(existing: Instance) -> str:
    """The content hash of a stored instance: the row's, else (an instance is stored without it, `_check`) taken
    now from its blob and kept on the row, once per instance that is ever sent again with other bytes."""
    if existing.content_sha256:
        return existing.content_sha256
    hashed = _content_hash_of(blob_read(blob=existing.blob))
    if not hashed:
        return ""  # stored under older checks than today's: only identical bytes count as the same
    existing.content_sha256 = hashed
    existing.save(update_fields=["content_sha256", "updated_at"])
    return existing.content_sha256


def _content_hash_of(data: bytes) -> str:
    """`studies.dicom.parse.content_hash` of a Part-10 object, or "" when it does not pass today's checks."""
    try:
        parsed, _ = dicom_parse.parse(data, limits=ingest_limits())
    except dicom_parse.InvalidDicom:
        return ""
    return parsed.content_sha256


def _finish(
    item: IngestItem,
    state: str,
    *,
    reason: str = "",
    failure: str = "",
    instance: Instance | None = None,
    release_quarantine: bool = False,
) -> None:
    """Record the item's verdict in one UPDATE; with `release_quarantine`, the quarantined copy goes too (its row
    at once, its file when the transaction commits)."""
    item.state, item.reason, item.failure, item.finished_at = state, reason[:300], failure, timezone.now()
    fields = ["state", "reason", "failure", "finished_at", "updated_at"]
    if instance is not None:
        item.instance = instance
        item.sop_instance_uid = instance.sop_instance_uid
        fields += ["instance", "sop_instance_uid"]
    quarantine = item.quarantine if release_quarantine else None
    if quarantine is not None:
        item.quarantine = None
        fields.append("quarantine")
    item.save(update_fields=fields)
    if quarantine is not None:
        blob_delete(blob=quarantine)


def _study_participants(instance: Instance) -> list[dict[str, Any]]:
    study = instance.series.study
    return [
        participant({"type": "patient", "id": study.patient.patient_id, "name": study.patient.name}),
        participant(
            {
                "type": "study",
                "id": study.study_instance_uid,
                "detail": {"accession": study.accession_number, "sop_class": instance.sop_class_uid},
            }
        ),
    ]


def _resolve_existing(item: IngestItem, existing: Instance, verdict: Verdict) -> IngestItem:
    """The same SOP Instance UID again. The same instance (the same pixel data and identifying attributes:
    `studies.dicom.parse.content_hash`, not the file bytes, which differ between a C-STORE receiver's rebuilt
    header and the sender's file) is a no-op; different content is kept apart as a conflict, never silently
    replacing what is stored."""
    same = existing.sha256 == hashlib.sha256(verdict.data).hexdigest()
    if not same:
        # The incoming object passed `_check`, so it hashes; the stored one may not under today's checks ("").
        incoming = verdict.parsed.content_sha256 or _content_hash_of(verdict.data)
        same = bool(incoming) and _stored_content_hash(existing) == incoming
    if same:
        _finish(
            item,
            IngestItem.State.DUPLICATE,
            reason="already stored with the same content",
            instance=existing,
            release_quarantine=True,
        )
        return item
    _finish(
        item,
        IngestItem.State.CONFLICT,
        reason="different content under a SOP Instance UID that is already stored; kept in quarantine for review",
        failure=IngestItem.Failure.CONFLICT,
        instance=existing,
    )
    audit_event_record(
        event=EventType.INGEST_CONFLICT,
        actor=item.actor,
        tenant=current_tenant(),  # the item's, not read again through its foreign key
        target=existing,
        participants=_study_participants(existing),
        outcome=Outcome.MINOR_FAILURE,
        outcome_description="conflicting content kept apart",
        system_principal=_principal(item),
        source_address=item.source_address,
        extra={"source": item.source, "batch": str(item.batch), "ingest_item": str(item.public_id)},
    )
    return item


@transaction.atomic
def _reject(item: IngestItem, exc: Rejected) -> None:
    _finish(item, IngestItem.State.REJECTED, reason=exc.reason, failure=exc.failure)
    details = {
        "source": item.source,
        "batch": str(item.batch),
        "ingest_item": str(item.public_id),
        "sha256": item.sha256,
    }
    if exc.malware:
        security_alert_raise(
            kind="malware",
            summary=exc.reason,
            event=EventType.MALWARE_DETECTED,
            actor=item.actor,
            target=item,
            extra=details,
        )
    else:
        audit_event_record(
            event=EventType.INGEST_REJECTED,
            actor=item.actor,
            tenant=current_tenant(),  # the item's, not read again through its foreign key
            target=item,
            outcome=Outcome.MINOR_FAILURE,
            outcome_description=exc.reason,
            system_principal=_principal(item),
            source_address=item.source_address,
            extra=details,
        )


# Verdicts: a door that waits for them (STOW-RS) is woken when they commit
# ------------------------------------------------------------------------------
# The database stays the record: a wake-up only tells the waiting request to read its items again now rather than
# at its next poll. A lost one (Redis flushed or down, the worker killed between its commit and the push) costs
# that request its fallback poll interval, never a wrong answer.

_VERDICTS_KEY = "enclave:ingest-verdicts:{batch}"


def _redis_client() -> Any | None:
    """The Redis client behind the Django cache, or None where the cache is not Redis (then waiters poll)."""
    get_client = getattr(getattr(cache, "_cache", None), "get_client", None)
    return get_client(write=True) if get_client is not None else None


def _verdicts_key(batch: uuid.UUID | str) -> str:
    return cache.make_and_validate_key(_VERDICTS_KEY.format(batch=batch))


def _verdicts_signal(items: Any) -> None:
    """After the verdicts of `items` commit: one push per STOW-RS request (batch) among them, for
    `ingest_verdicts_wait`. The doors that do not wait (C-STORE, upload) get none."""
    batches = {str(item.batch) for item in items if item.source == IngestItem.Source.STOWRS}
    if batches:
        transaction.on_commit(lambda: _verdicts_push(batches))


def _verdicts_push(batches: set[str]) -> None:
    try:
        client = _redis_client()
        if client is None:
            return
        # Outlives any request that waits for it, then goes by itself (the request deletes nothing: a round trip).
        ttl = math.ceil(settings.DICOMWEB_STOW_WAIT_SECONDS) + 60
        with client.pipeline(transaction=False) as pipe:
            for batch in batches:
                key = _verdicts_key(batch)
                pipe.rpush(key, 1)
                pipe.expire(key, ttl)
            pipe.execute()
    except (RedisError, OSError) as exc:  # the waiter reads the database at its next poll instead
        logger.warning("ingest verdicts wake-up not sent (%s)", type(exc).__name__)


def ingest_verdicts_wait(*, batch: uuid.UUID, timeout: float) -> None:
    """Block until the worker signals that verdicts of request `batch` committed (`_verdicts_signal`), or at most
    `timeout` seconds (the caller's fallback poll: the signal may be lost, the caller reads the database after
    this either way). Without Redis, simply sleeps `timeout`."""
    if timeout <= 0:
        return
    started = time.monotonic()
    try:
        client = _redis_client()
        if client is not None:
            # Under the client's socket timeout, so that a quiet wait is not taken for Redis being down.
            block = min(timeout, settings.CACHE_REDIS_TIMEOUT_SECONDS / 2)
            client.blpop([_verdicts_key(batch)], timeout=block)
            return
    except (RedisError, OSError) as exc:
        logger.warning("ingest verdicts wait falls back to polling (%s)", type(exc).__name__)
    time.sleep(max(0.0, timeout - (time.monotonic() - started)))


# Receipts: a worker gathering its next batch is woken when a door records a request's objects
# ------------------------------------------------------------------------------
# Only a hint, as the verdicts' wake-up above: the Celery message each receipt queues is what reaches a worker, and
# the sweeper what finds an item whose message was lost. A signal lost costs a gathering worker the rest of its
# INGEST_GATHER_SECONDS; a signal nobody takes is one empty claim of the next gathering worker, or expires.

_RECEIVED_KEY = "enclave:ingest-received:{tenant_id}"


def _received_key(tenant_id: int) -> str:
    return cache.make_and_validate_key(_RECEIVED_KEY.format(tenant_id=tenant_id))


def _received_signal(*, tenant_id: int) -> None:
    """After the receipt commits: one push for a worker gathering the tenant's next batch (`_received_wait`)."""
    transaction.on_commit(lambda: _received_push(tenant_id))


def _received_push(tenant_id: int) -> None:
    try:
        client = _redis_client()
        if client is None:
            return
        key = _received_key(tenant_id)
        # One signal at most (a second receipt before a worker takes the first needs no second wake-up), gone
        # by itself soon after the longest gathering wait.
        with client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, 1)
            pipe.ltrim(key, -1, -1)
            pipe.pexpire(key, 1000 + math.ceil(settings.INGEST_GATHER_SECONDS * 1000))
            pipe.execute()
    except (RedisError, OSError) as exc:  # a gathering worker waits its INGEST_GATHER_SECONDS instead
        logger.warning("ingest receipt signal not sent (%s)", type(exc).__name__)


def _received_wait(*, tenant_id: int, timeout: float) -> bool:
    """Block until a door signals a receipt of the tenant (`_received_signal`), or at most `timeout` seconds;
    True when a signal came. Without Redis, sleeps `timeout`."""
    if timeout <= 0:
        return False
    started = time.monotonic()
    try:
        client = _redis_client()
        if client is not None:
            # Under the client's socket timeout, so that a quiet wait is not taken for Redis being down.
            # At least a millisecond: a timeout of 0 would block for ever.
            block = max(0.001, min(timeout, settings.CACHE_REDIS_TIMEOUT_SECONDS / 2))
            return client.blpop([_received_key(tenant_id)], timeout=block) is not None
    except (RedisError, OSError) as exc:
        logger.warning("ingest gathering falls back to sleeping (%s)", type(exc).__name__)
    time.sleep(max(0.0, timeout - (time.monotonic() - started)))
    return False


# Sweeper
# ------------------------------------------------------------------------------


def ingest_requeue_stale() -> int:
    """Queue again every item of the current tenant left `received` or `processing` too long: the broker lost the
    message or the worker died. Processing claims by compare-and-set, so a message that was not lost after all
    only finds the item taken.

    Each item is queued again at most once per `INGEST_STALE_SECONDS`: the sweep touches a waiting item's
    `updated_at` and hands a dead claim back as `received`, so an item that merely waits behind a long queue is
    not queued again by every sweep (under a large load, every sweep used to add a message per waiting item)."""
    tenant = current_tenant()
    now = timezone.now()
    stale = now - timedelta(seconds=settings.INGEST_STALE_SECONDS)
    waiting = Q(state=IngestItem.State.RECEIVED, updated_at__lt=stale)
    dead_claim = Q(state=IngestItem.State.PROCESSING, claimed_at__lt=stale)
    ids = list(IngestItem.objects.filter(waiting | dead_claim).values_list("pk", flat=True))
    if not ids:
        return 0
    # The state conditions again: an item claimed or finished since the look above is left alone.
    IngestItem.objects.filter(waiting, pk__in=ids).update(updated_at=now)
    IngestItem.objects.filter(dead_claim, pk__in=ids).update(
        state=IngestItem.State.RECEIVED, claimed_at=None, updated_at=now
    )
    for item_id in ids:
        task_queue("studies.tasks.ingest_process", tenant_id=tenant.pk, item_id=item_id)
    return len(ids)
