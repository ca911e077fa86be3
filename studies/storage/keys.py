"""The key hierarchy: the master key, the tenant keys (rows, wrapped by the master key) and the study keys (files in
the blob stores, wrapped by a tenant key, never in the database).

Why study keys live outside the database: a database backup keeps every wrapped data key and tenant key it saw.
Were a study's data keys wrapped by the tenant key alone, that backup, a saved copy of the ciphertext and the
master key would open a study that retention deleted. Wrapped by a study key whose only copies are the two key
files that deletion removes, they cannot be opened by anything a backup holds.

A study key file is `t<tenant>/keys/<key_id[:2]>/<key_id>.v<tenant key version>`: the version is in the name, so
rotating the tenant key writes a new file before the old one goes and never overwrites a key in place. Its bytes
are MAGIC followed by the study key wrapped (AES-GCM) with the tenant id, the key id and the version bound in.

Unwrapped study keys are kept in a bounded per-process LRU (`STUDY_KEY_CACHE_SIZE`), so ingest and retrieval
unwrap each study's key once per process, not once per blob. They are never logged. Callers run inside a
tenant scope.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections import OrderedDict

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.db.models import Max

from studies.models import StudyKey, TenantKey
from studies.storage import envelope
from studies.storage.durable import stored_file_sync
from tenants.models import Tenant
from tenants.scoping import current_tenant

logger = logging.getLogger(__name__)

PRIMARY, REPLICA = "blobs", "replica"
KEY_FILE_MAGIC = b"SKY1"


class KeyUnavailable(Exception):
    """A key cannot be opened: its file is gone from both stores, or no master or tenant key opens it."""


# --- master and tenant keys ---------------------------------------------------------------------------------


def _decode_master(value: str, name: str) -> bytes:
    key = base64.b64decode(value)
    if len(key) != envelope.KEY_BYTES:
        raise RuntimeError(f"{name} must be 32 bytes, base64-encoded.")
    return key


def master_key_for_wrapping() -> bytes:
    """MASTER_KEY_NEW while a master-key rotation is under way (so that no key is wrapped again by the old one),
    else MASTER_KEY."""
    if settings.MASTER_KEY_NEW:
        return _decode_master(settings.MASTER_KEY_NEW, "MASTER_KEY_NEW")
    return _decode_master(settings.MASTER_KEY, "MASTER_KEY")


def master_keys_for_unwrapping() -> list[bytes]:
    keys = [_decode_master(settings.MASTER_KEY_NEW, "MASTER_KEY_NEW")] if settings.MASTER_KEY_NEW else []
    return [*keys, _decode_master(settings.MASTER_KEY, "MASTER_KEY")]


def tenant_key_unwrap(row: TenantKey) -> bytes:
    """The plaintext of a tenant key row, opened by whichever master key wraps it."""
    if row.retired_at is not None:
        raise KeyUnavailable(f"tenant key v{row.version} is retired")
    for master in master_keys_for_unwrapping():
        try:
            return envelope.unwrap_tenant_key(
                master_key=master, wrapped=bytes(row.wrapped), tenant_id=row.tenant_id, version=row.version
            )
        except envelope.DecryptionError:
            continue
    raise KeyUnavailable(f"no master key opens tenant key v{row.version}")


def tenant_key_ensure(*, tenant: Tenant) -> TenantKey:
    """The tenant's key for new wrapping (its highest active version), created on first use. Safe under
    concurrent first use."""
    key = TenantKey.objects.filter(active=True).order_by("-version").first()
    if key is not None:
        return key
    wrapped = envelope.wrap_tenant_key(
        master_key=master_key_for_wrapping(), tenant_key=envelope.new_key(), tenant_id=tenant.pk, version=1
    )
    try:
        with transaction.atomic():
            return TenantKey.objects.create(tenant=tenant, version=1, wrapped=wrapped, active=True)
    except IntegrityError:
        return TenantKey.objects.get(version=1)


def tenant_key(version: int, row: TenantKey | None = None) -> bytes:
    if row is None or row.version != version:
        row = TenantKey.objects.get(version=version)
    return tenant_key_unwrap(row)


# --- study keys ---------------------------------------------------------------------------------------------


class _StudyKeyCache:
    """A bounded LRU of unwrapped study keys by (tenant id, StudyKey pk), shared by the threads of a process."""

    def __init__(self) -> None:
        self._keys: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self._lock:
            value = self._keys.get(key)
            if value is not None:
                self._keys.move_to_end(key)
            return value

    def put(self, key: tuple[int, int], value: bytes) -> None:
        with self._lock:
            self._keys[key] = value
            self._keys.move_to_end(key)
            while len(self._keys) > max(settings.STUDY_KEY_CACHE_SIZE, 0):
                self._keys.popitem(last=False)

    def forget(self, key: tuple[int, int]) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


study_key_cache = _StudyKeyCache()


def study_key_id(*, tenant_id: int, study_instance_uid: str) -> str:
    return hashlib.sha256(f"enclave:study-key:{tenant_id}:{study_instance_uid}".encode()).hexdigest()


def study_key_file_name(*, tenant_id: int, key_id: str, version: int) -> str:
    return f"t{tenant_id}/keys/{key_id[:2]}/{key_id}.v{version}"


def _key_file_write(name: str, content: bytes, *, replica_required: bool = True) -> None:
    """Write one key file to both stores. A file already there under that name is replaced: it can only be the
    leftover of a transaction that rolled back or of a rotation that was interrupted, and it must never be kept
    (a reused study key would reopen a deleted study from an old backup). Without `replica_required` (the own key
    of a quarantined upload, whose bytes are in the quarantine store alone anyway) a replica store that fails does
    not fail the write."""
    for store in (PRIMARY, REPLICA):
        try:
            if storages[store].exists(name):
                storages[store].delete(name)
            saved = storages[store].save(name, ContentFile(content))
        except Exception:  # any failure of the store (OSError, or botocore's for S3)
            if store == REPLICA and not replica_required:
                logger.warning("a key file was not written to the replica store", exc_info=True)
                continue
            raise
        if saved != name:  # another writer got in between: never leave a second, unknown copy of a key
            storages[store].delete(saved)
            raise KeyUnavailable("a study key file was written concurrently")
        stored_file_sync(storages[store], saved)  # before any blob it opens can count as stored


def _key_file_read(name: str) -> bytes:
    """The wrapped key in a key file, from the primary, else from the replica."""
    for store in (PRIMARY, REPLICA):
        try:
            with storages[store].open(name, "rb") as handle:
                content = handle.read()
        except OSError:
            logger.warning("study key file missing from %s", store)
            continue
        if content.startswith(KEY_FILE_MAGIC):
            return content[len(KEY_FILE_MAGIC) :]
        logger.warning("study key file damaged in %s", store)
    raise KeyUnavailable("the study key file is gone from both stores")


def study_key_files_delete(*, tenant_id: int, key_id: str) -> None:
    """Remove every version of a study's key file from both stores once the transaction commits (so a rollback
    never destroys a key still in use). Every version, not only the current one: an interrupted rotation may
    have left the previous one behind."""
    versions = (TenantKey.objects.aggregate(top=Max("version"))["top"]) or 1
    names = [study_key_file_name(tenant_id=tenant_id, key_id=key_id, version=v) for v in range(1, versions + 1)]

    def remove() -> None:
        for store in (PRIMARY, REPLICA):
            for name in names:
                try:
                    storages[store].delete(name)
                except OSError:
                    logger.error("could not delete a study key file from %s", store)

    transaction.on_commit(remove)


def study_key_write(
    *, row: StudyKey, study_key: bytes, version: int, kek: bytes, replica_required: bool = True
) -> None:
    """Write `study_key` wrapped by tenant key `version` (`kek`) to both stores, as the file for that version."""
    wrapped = envelope.wrap_study_key(
        tenant_key=kek, study_key=study_key, tenant_id=row.tenant_id, key_id=row.key_id, version=version
    )
    name = study_key_file_name(tenant_id=row.tenant_id, key_id=row.key_id, version=version)
    _key_file_write(name, KEY_FILE_MAGIC + wrapped, replica_required=replica_required)


def study_key_read_file(*, row: StudyKey, version: int, kek: bytes) -> bytes:
    """Open a study key from its file of tenant key `version`, bypassing the cache (rotation, forensics)."""
    name = study_key_file_name(tenant_id=row.tenant_id, key_id=row.key_id, version=version)
    try:
        return envelope.unwrap_study_key(
            tenant_key=kek, wrapped=_key_file_read(name), tenant_id=row.tenant_id, key_id=row.key_id, version=version
        )
    except envelope.DecryptionError as exc:
        raise KeyUnavailable("the study key file does not open with its tenant key") from exc


def study_key_open(row: StudyKey) -> bytes:
    """The plaintext of a study key: from the process cache, else from its file (primary, then replica)."""
    cache_key = (row.tenant_id, row.pk)
    cached = study_key_cache.get(cache_key)
    if cached is not None:
        return cached
    try:
        key = study_key_read_file(row=row, version=row.key_version, kek=tenant_key(row.key_version))
    except (KeyUnavailable, TenantKey.DoesNotExist):
        # A rotation may have moved the key to a new file between our reading the row and the file.
        fresh = StudyKey.objects.filter(pk=row.pk).first()
        if fresh is None or fresh.key_version == row.key_version:
            raise
        key = study_key_read_file(row=fresh, version=fresh.key_version, kek=tenant_key(fresh.key_version))
    study_key_cache.put(cache_key, key)
    return key


def study_key_ensure(
    *, tenant: Tenant, study_instance_uid: str, replica_required: bool = True
) -> tuple[StudyKey, bytes]:
    """The row and plaintext of the study's key, created (row and both files) on first use.

    Concurrent first uses are serialised by the row's unique index: the second creator waits until the first
    commits and then opens its key; if the first rolled back, the second writes a fresh key over the leftover."""
    key_id = study_key_id(tenant_id=tenant.pk, study_instance_uid=study_instance_uid)
    row = StudyKey.objects.filter(key_id=key_id).first()
    if row is not None:
        return row, study_key_open(row)
    kek_row = tenant_key_ensure(tenant=tenant)
    try:
        with transaction.atomic():
            row = StudyKey.objects.create(tenant=tenant, key_id=key_id, key_version=kek_row.version)
            key = envelope.new_key()
            study_key_write(
                row=row,
                study_key=key,
                version=kek_row.version,
                kek=tenant_key(kek_row.version, kek_row),
                replica_required=replica_required,
            )
    except IntegrityError:
        row = StudyKey.objects.get(key_id=key_id)
        return row, study_key_open(row)
    study_key_cache.put((tenant.pk, row.pk), key)
    return row, key


def study_key_destroy(*, row: StudyKey) -> None:
    """Shred the study: delete its key row now and its key files after the commit. The caller has deleted the
    blobs that referenced it (the foreign key protects it until then)."""
    tenant_id, key_id, pk = row.tenant_id, row.key_id, row.pk
    row.delete()
    study_key_cache.forget((tenant_id, pk))
    study_key_files_delete(tenant_id=tenant_id, key_id=key_id)


def study_key_get(*, study_instance_uid: str) -> StudyKey | None:
    tenant = current_tenant()
    return StudyKey.objects.filter(
        key_id=study_key_id(tenant_id=tenant.pk, study_instance_uid=study_instance_uid)
    ).first()
