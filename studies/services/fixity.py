"""Fixity and repair, replica catch-up, orphan cleanup and restore from the replica (issue 13, SECURITY.md A7).

Every function here runs inside one tenant's scope (the beat jobs fan out per tenant; `restore_blobs` opens each
tenant's scope) and reaches the stores only through the Storage API, so a folder and S3 behave alike.

- Catch-up (`blob_replicas_catch_up`): every non-quarantine blob must have its replica copy. Rows never
  replicated (`replicated_at` null: the replica store failed at write time) and rows whose replica file is
  missing (listed folder by folder) get a copy of the primary, verified (decrypted, size and SHA-256) first.
- Fixity (`blob_fixity_check`): each run reads its share of the cycle (all blobs once per BLOB_FIXITY_CYCLE_DAYS)
  from where the last run stopped (a BlobCursor row), within per-run caps on blobs and bytes, and decrypts and
  hash-checks BOTH copies. A bad or missing copy raises a SecurityAlert (with its audit event) and is rewritten
  from the good copy; with no good copy the blob is marked damaged and a critical alert is raised. Reads already
  refuse bytes that do not match the row (studies.storage.blobs.blob_read), so a damaged blob is never served.
- Orphans (`blob_orphans_remove`): ciphertext under a blob-kind folder that no row references and older than
  BLOB_ORPHAN_GRACE_SECONDS is removed (a worker killed between writing and committing); younger files may
  belong to a transaction still open. Other folders (`keys/`, `backups/`) are never looked at.
- Restore (`blob_restore_from_replica`): rewrites every primary copy from the replica, each verified before it is
  written, resumable through a BlobCursor row; the tenant's `keys/` files are copied verbatim.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from audit.events import EventType
from audit.models import SecurityAlert
from audit.services import audit_event_record, security_alert_raise
from studies.models import Blob, BlobCursor, Instance
from studies.storage import envelope
from studies.storage.blobs import (
    PRIMARY,
    QUARANTINE,
    REPLICA,
    blob_data_key,
    blob_sealed_check,
    blob_sealed_put,
    blob_sealed_read,
)
from tenants.scoping import current_tenant

logger = logging.getLogger(__name__)

COPIES = (PRIMARY, REPLICA)
# Folders of a tenant that hold blobs (one per Blob.Kind); nothing else in a store is ours to judge here.
BLOB_FOLDERS = tuple(kind.value for kind in Blob.Kind)
KEYS_FOLDER = "keys"


def _stored_blobs():
    return Blob.objects.exclude(kind=Blob.Kind.QUARANTINE)


def _walk(store: str, folder: str) -> Iterator[str]:
    """Every file name under `folder` of a store, recursively, through the Storage API (a missing folder is
    empty)."""
    storage = storages[store]
    try:
        dirs, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        yield f"{folder}/{name}"
    for sub in dirs:
        yield from _walk(store, f"{folder}/{sub}")


def _folder(name: str) -> str:
    return name.rsplit("/", 1)[0]


def _cursor(job: str) -> BlobCursor:
    cursor, _ = BlobCursor.objects.get_or_create(tenant=current_tenant(), job=job)
    return cursor


def _participants(blob: Blob) -> list:
    instance = Instance.objects.filter(blob=blob).select_related("series__study__patient").first()
    if instance is None:
        return []
    return [instance.series.study.patient, instance.series.study]


# Replica catch-up
# ------------------------------------------------------------------------------


def _replicate(blob: Blob, tenant_keys: dict) -> bool:
    """Copy the primary to the replica once its ciphertext is verified; False if the primary is not good (the
    fixity job alerts about it)."""
    try:
        sealed = blob_sealed_read(store=PRIMARY, name=blob.storage_name)
        blob_sealed_check(blob=blob, sealed=sealed, data_key=blob_data_key(blob=blob, tenant_keys=tenant_keys))
    except (OSError, envelope.DecryptionError):
        logger.warning("blob %s: no good primary copy to replicate", blob.public_id)
        return False
    blob_sealed_put(store=REPLICA, name=blob.storage_name, sealed=sealed)
    Blob.objects.filter(pk=blob.pk).update(replicated_at=timezone.now())
    return True


def blob_replicas_catch_up(*, limit: int | None = None) -> int:
    """Write the missing replica copies of the current tenant's blobs (at most `limit` per run); returns how many
    were written. System job, no actor; idempotent. One BLOBS_REPLICATED event per run that wrote any."""
    limit = limit if limit is not None else settings.BLOB_CATCHUP_MAX_BLOBS_PER_RUN
    tenant_keys: dict = {}
    missing: list[int] = list(_stored_blobs().filter(replicated_at__isnull=True).values_list("pk", flat=True)[:limit])
    if len(missing) < limit:
        listed_folder, listed = "", set()
        names = _stored_blobs().filter(replicated_at__isnull=False).order_by("storage_name")
        for pk, name in names.values_list("pk", "storage_name").iterator(chunk_size=2000):
            folder = _folder(name)
            if folder != listed_folder:
                listed_folder, listed = folder, set(_walk(REPLICA, folder))
            if name not in listed:
                missing.append(pk)
                if len(missing) >= limit:
                    break
    written = 0
    for pk in sorted(missing):
        with transaction.atomic():
            # The row locked, as in the fixity job: a deletion waits, then removes the copy written here too.
            blob = Blob.objects.select_for_update().filter(pk=pk).first()
            if blob is not None:
                written += _replicate(blob, tenant_keys)
    if written:
        audit_event_record(event=EventType.BLOBS_REPLICATED, extra={"written": written, "found_missing": len(missing)})
    return written


# Fixity
# ------------------------------------------------------------------------------


@dataclass
class FixityReport:
    checked: int = 0
    bytes_read: int = 0
    repaired: int = 0
    unavailable: int = 0
    cycle_completed: bool = False
    alerts: list[SecurityAlert] = field(default_factory=list)


def _copy_checked(store: str, blob: Blob, data_key: bytes, report: FixityReport) -> tuple[bytes | None, str]:
    """(ciphertext, "") for a good copy, else (None, what is wrong with it)."""
    try:
        sealed = blob_sealed_read(store=store, name=blob.storage_name)
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    report.bytes_read += len(sealed)
    try:
        blob_sealed_check(blob=blob, sealed=sealed, data_key=data_key)
    except envelope.DecryptionError:
        return None, "does not decrypt to the stored size and SHA-256"
    return sealed, ""


def _blob_fixity(blob: Blob, tenant_keys: dict, report: FixityReport) -> None:
    data_key = blob_data_key(blob=blob, tenant_keys=tenant_keys)
    copies = {store: _copy_checked(store, blob, data_key, report) for store in COPIES}
    report.checked += 1
    bad = {store: reason for store, (sealed, reason) in copies.items() if sealed is None}
    good = [sealed for sealed, _ in copies.values() if sealed is not None]
    if not bad:
        if blob.damaged_at is not None:  # mended by hand since: readable again
            Blob.objects.filter(pk=blob.pk).update(damaged_at=None)
        return
    with transaction.atomic():
        # The row locked: a deletion (retention) waits for the repair, then removes what it wrote; a row deleted
        # meanwhile is no finding (its files go after its commit).
        locked = Blob.objects.select_for_update().filter(pk=blob.pk).first()
        if locked is None:
            return
        # Looked at again under the lock: another run (a doubled beat) may have repaired it meanwhile.
        copies = {store: _copy_checked(store, locked, data_key, FixityReport()) for store in COPIES}
        bad = {store: reason for store, (sealed, reason) in copies.items() if sealed is None}
        good = [sealed for sealed, _ in copies.values() if sealed is not None]
        if not bad:
            return
        if bad == {REPLICA: "missing"} and locked.replicated_at is None:
            _replicate(locked, tenant_keys)  # never replicated: the catch-up's work, not damage
            return
        evidence = [f"blob:{blob.public_id}", *(f"{store}: {reason}" for store, reason in sorted(bad.items()))]
        if good:
            for store in bad:
                blob_sealed_put(store=store, name=blob.storage_name, sealed=good[0])
            report.repaired += 1
            report.alerts.append(
                security_alert_raise(
                    kind="blob_fixity",
                    summary=f"A stored copy failed its fixity check ({', '.join(sorted(bad))}); repaired",
                    event=EventType.BLOB_FIXITY_FAILED,
                    severity=SecurityAlert.Severity.HIGH,
                    target=locked,
                    participants=_participants(locked),
                    extra={"copies": bad, "repaired": sorted(bad)},
                    subject=str(blob.public_id),
                    evidence=evidence,
                )
            )
            audit_event_record(event=EventType.BLOB_REPAIRED, target=locked, extra={"stores": sorted(bad)})
            if locked.damaged_at is not None:
                Blob.objects.filter(pk=blob.pk).update(damaged_at=None)
            return
        report.unavailable += 1
        if locked.damaged_at is not None:
            return  # already marked and alerted; a person is on it
        Blob.objects.filter(pk=blob.pk).update(damaged_at=timezone.now())
        report.alerts.append(
            security_alert_raise(
                kind="blob_unavailable",
                summary="Both copies of a stored object failed their fixity check; it is unavailable",
                event=EventType.BLOB_UNAVAILABLE,
                severity=SecurityAlert.Severity.CRITICAL,
                target=locked,
                participants=_participants(locked),
                extra={"copies": bad},
                subject=str(blob.public_id),
                evidence=evidence,
            )
        )


def _fixity_quota(total: int) -> int:
    """This run's share of the cycle: every blob once per BLOB_FIXITY_CYCLE_DAYS at one run per interval."""
    runs_per_cycle = max(1, settings.BLOB_FIXITY_CYCLE_DAYS * 86400 // settings.BLOB_FIXITY_INTERVAL_SECONDS)
    return max(1, math.ceil(total / runs_per_cycle))


def blob_fixity_check(*, max_blobs: int | None = None, max_bytes: int | None = None) -> FixityReport:
    """Check the next blobs of the current tenant's fixity cycle: both copies decrypted and compared with the
    row's size and SHA-256; a bad copy is repaired from the good one and alerted, a blob with no good copy is
    marked damaged and alerted critical. Runs until this run's share of the cycle, `max_blobs` (default: the share,
    capped by BLOB_FIXITY_MAX_BLOBS_PER_RUN) or `max_bytes` (BLOB_FIXITY_MAX_BYTES_PER_RUN) is reached. System job,
    no actor; the cursor row keeps its place, so runs may be late, doubled or killed."""
    report = FixityReport()
    blobs = _stored_blobs()
    if max_blobs is None:
        max_blobs = min(_fixity_quota(blobs.count()), settings.BLOB_FIXITY_MAX_BLOBS_PER_RUN)
    max_bytes = max_bytes if max_bytes is not None else settings.BLOB_FIXITY_MAX_BYTES_PER_RUN
    cursor = _cursor(BlobCursor.Job.FIXITY)
    tenant_keys: dict = {}
    while report.checked < max_blobs and report.bytes_read < max_bytes:
        batch = list(blobs.filter(pk__gt=cursor.last_blob_id).order_by("pk")[: min(500, max_blobs - report.checked)])
        if not batch:
            # The end of the tenant's blobs: the cycle is complete, the next run starts over.
            now = timezone.now()
            cursor.last_blob_id, cursor.last_cycle_completed_at, cursor.cycle_started_at = 0, now, now
            cursor.checked_in_cycle = 0
            cursor.save(update_fields=["last_blob_id", "last_cycle_completed_at", "cycle_started_at",
                                       "checked_in_cycle", "updated_at"])  # fmt: skip
            report.cycle_completed = True
            break
        for blob in batch:
            _blob_fixity(blob, tenant_keys, report)
            cursor.last_blob_id = blob.pk
            cursor.checked_in_cycle += 1
            if report.bytes_read >= max_bytes:
                break
        cursor.save(update_fields=["last_blob_id", "checked_in_cycle", "updated_at"])
    return report


# Orphans
# ------------------------------------------------------------------------------


def blob_orphans_remove(*, grace: timedelta | None = None, now: datetime | None = None) -> dict[str, int]:
    """Remove, from each store, the current tenant's ciphertext under a blob-kind folder that no Blob row
    references and whose modification time is older than `grace` (BLOB_ORPHAN_GRACE_SECONDS). Returns the count
    per store; one BLOB_ORPHANS_REMOVED event per store that lost any. System job, idempotent. `now` is the
    clock (a test or the bench passes a later one rather than waiting out the grace)."""
    grace = grace if grace is not None else timedelta(seconds=settings.BLOB_ORPHAN_GRACE_SECONDS)
    tenant = current_tenant()
    cutoff = (now or timezone.now()) - grace
    removed: dict[str, int] = {}
    for store in (PRIMARY, REPLICA, QUARANTINE):
        storage = storages[store]
        count = size = 0
        for kind in BLOB_FOLDERS:
            root = f"t{tenant.pk}/{kind}"
            try:
                subfolders, _ = storage.listdir(root)
            except FileNotFoundError:
                continue
            for sub in subfolders:
                folder = f"{root}/{sub}"
                files = list(_walk(store, folder))
                if not files:
                    continue
                referenced = set(
                    Blob.objects.filter(storage_name__startswith=f"{folder}/").values_list("storage_name", flat=True)
                )
                for name in files:
                    if name in referenced or storage.get_modified_time(name) > cutoff:
                        continue
                    size += storage.size(name)
                    storage.delete(name)
                    count += 1
        removed[store] = count
        if count:
            audit_event_record(
                event=EventType.BLOB_ORPHANS_REMOVED,
                extra={"store": store, "removed": count, "bytes": size, "grace_seconds": int(grace.total_seconds())},
            )
    return removed


# Restore from the replica
# ------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    restored: int = 0
    failed: int = 0
    bytes_written: int = 0
    key_files: int = 0
    resumed_after: int = 0
    failures: list[str] = field(default_factory=list)


def _key_files_copy() -> int:
    """Copy the tenant's `keys/` files (not blobs: no row, no hash) from the replica verbatim where the primary
    lacks them."""
    copied = 0
    primary = storages[PRIMARY]
    for name in _walk(REPLICA, f"t{current_tenant().pk}/{KEYS_FOLDER}"):
        if primary.exists(name):
            continue
        blob_sealed_put(store=PRIMARY, name=name, sealed=blob_sealed_read(store=REPLICA, name=name))
        copied += 1
    return copied


def _restore_one(blob: Blob, data_key: bytes) -> int:
    """Copy one blob's replica to the primary once verified; its ciphertext's size. No database (runs in a
    thread)."""
    sealed = blob_sealed_read(store=REPLICA, name=blob.storage_name)
    blob_sealed_check(blob=blob, sealed=sealed, data_key=data_key)
    blob_sealed_put(store=PRIMARY, name=blob.storage_name, sealed=sealed)
    return len(sealed)


def _restore_or_error(blob: Blob, data_key: bytes) -> int | Exception:
    try:
        return _restore_one(blob, data_key)
    except (OSError, envelope.DecryptionError) as exc:
        return exc


def blob_restore_from_replica(
    *,
    batch_size: int = 200,
    workers: int = 4,
    restart: bool = False,
    progress: Callable[[RestoreReport], None] | None = None,
) -> RestoreReport:
    """Rebuild the current tenant's primary store from the replica: every replica copy is decrypted and checked
    against its row's size and SHA-256 before it is written to the primary (a bad replica copy is counted and
    named, never written). `workers` threads do the reads, checks and writes of a batch (object stores reward
    concurrency); the data keys are unwrapped first, in this thread, since the threads touch no database.
    Resumable: a BlobCursor row keeps the last batch done, and a finished run removes it. One BLOBS_RESTORED
    event with the counts. For operators (manage.py restore_blobs); no actor."""
    report = RestoreReport()
    if restart:
        BlobCursor.objects.filter(job=BlobCursor.Job.RESTORE).delete()
    cursor = _cursor(BlobCursor.Job.RESTORE)
    report.resumed_after = cursor.last_blob_id
    tenant_keys: dict = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while True:
            batch = list(_stored_blobs().filter(pk__gt=cursor.last_blob_id).order_by("pk")[:batch_size])
            if not batch:
                break
            keys = [blob_data_key(blob=blob, tenant_keys=tenant_keys) for blob in batch]
            for blob, outcome in zip(batch, pool.map(_restore_or_error, batch, keys), strict=True):
                if isinstance(outcome, Exception):
                    report.failed += 1
                    report.failures.append(f"{blob.public_id}: {outcome.__class__.__name__}")
                else:
                    report.restored += 1
                    report.bytes_written += outcome
            cursor.last_blob_id = batch[-1].pk
            cursor.save(update_fields=["last_blob_id", "updated_at"])
            if progress is not None:
                progress(report)
    report.key_files = _key_files_copy()
    with transaction.atomic():
        audit_event_record(
            event=EventType.BLOBS_RESTORED,
            outcome=0 if not report.failed else 4,
            outcome_description="" if not report.failed else f"{report.failed} replica copies failed their check",
            extra={"restored": report.restored, "failed": report.failed, "bytes": report.bytes_written,
                   "key_files": report.key_files, "resumed_after_blob": report.resumed_after},
        )  # fmt: skip
        cursor.delete()
    return report
