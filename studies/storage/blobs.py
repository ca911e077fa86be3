"""Encrypted blobs in Django storages: the primary store, its replica, and the quarantine.

Every blob is written encrypted (studies.storage.envelope) under a name that starts with its tenant's id, with a
fresh data key wrapped by its study's key when it belongs to one study (studies.storage.keys), else by a key of its
own (exports, training certificates, quarantined uploads: `own_key_uid`), kept like a study key as files in
the stores and destroyed with the blob; every read decrypts and authenticates every chunk, checks the size against
the row, and falls back to the replica when the primary copy is missing or damaged. Callers run inside a tenant
scope.

Why a read checks AES-GCM's tags and the size but not the SHA-256 of the plaintext again (issue 10: a second
SHA-256 over every byte cost twice the decryption, about 0.7 ms of CPU per MB here). The data key is random, made
for this one blob and never used for another (a promoted quarantine blob keeps its own key, id and ciphertext);
it is stored only wrapped, under associated data naming the tenant and the blob id. Every chunk's tag is a MAC
under that key over the chunk's ciphertext and associated data naming the tenant, the blob id, the chunk's index
and whether it is the last, so a copy that decrypts is exactly the sequence of chunks `encrypt_and_hash` sealed
for this blob, whole, in order, none added, and its plaintext is the bytes that were hashed in that same pass
(the size is compared as well). Changing a single byte undetected means forging a 128-bit tag, or holding the
data key, that is the study key and through it the tenant and master keys. The stored SHA-256 remains the
fixity record: `blob_sealed_check`, which the fixity job (studies.services.fixity), the restore drill and the
promotion of a quarantined blob use, still compares it, so the archive's hashes stay checked against the stored
bytes independently of the keys.

No data key is ever wrapped by the tenant key alone any more (blobs stored before are, until `rotate_keys
--adopt-study-keys`): a database backup holds every tenant key it saw, so such a blob would outlive its
deletion in any old backup.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import queue
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple, cast

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.db import transaction
from django.utils import timezone

from studies.models import Blob, StudyKey
from studies.storage import envelope
from studies.storage.durable import Behind, file_written, files_sync, linked, name_given, synced_meanwhile
from studies.storage.keys import (
    KeyUnavailable,
    study_key_cache,
    study_key_destroy,
    study_key_ensure,
    study_key_id,
    study_key_open,
    tenant_key,
)
from tenants.scoping import current_tenant

logger = logging.getLogger(__name__)

PRIMARY, REPLICA, QUARANTINE = "blobs", "replica", "quarantine"


def own_key_uid(blob_id: object) -> str:
    """The name a blob's own key is made under (never a DICOM UID, which has only digits and dots). Blobs of no
    one study (exports, training certificates, quarantined uploads) have a key of their own, a StudyKey row and
    its files like a study's, destroyed when the blob is."""
    return f"object:{blob_id}"


class BlobRef(NamedTuple):
    """A blob as a read needs it, made from columns (`BLOB_COLUMNS`) instead of a Blob object: a WADO-RS series
    reads one per instance, and building the model objects was most of its rows' cost (issue 10). Exactly what
    `blob_read_chunks` and `blob_data_key` read of a Blob, under the same names."""

    tenant_id: int
    public_id: uuid.UUID
    kind: str
    storage_name: str
    size: int
    wrapped_key: bytes
    key_version: int
    study_key_id: int | None
    damaged_at: datetime | None

    @property
    def study_key(self) -> StudyKey:
        """The wrapping study key's row, read when its key is not in the cache (as Blob.study_key would be; in
        the caller's tenant scope); StudyKey.DoesNotExist once it is destroyed."""
        if self.study_key_id is None:
            raise StudyKey.DoesNotExist("a blob wrapped by its tenant key has no study key")
        return StudyKey.objects.get(pk=self.study_key_id)


# The Blob columns of a BlobRef, in its order, for values_list() across a relation ("blob__" + each).
BLOB_COLUMNS = ("tenant_id", "public_id", "kind", "storage_name", "size", "wrapped_key", "key_version",
                "study_key_id", "damaged_at")  # fmt: skip


class BlobUnreadable(Exception):
    """Neither the primary nor the replica copy decrypts to the bytes the row describes."""


def blob_write(
    *,
    kind: str,
    data: bytes,
    replicate: bool = True,
    study_instance_uid: str = "",
    study_keys: dict[str, tuple[StudyKey, bytes]] | None = None,
) -> Blob:
    """`blob_seal`, and the row saved in the caller's transaction."""
    blob = blob_seal(
        kind=kind, data=data, replicate=replicate, study_instance_uid=study_instance_uid, study_keys=study_keys
    )
    blob.save()
    return blob


# The largest copy `blob_seal` writes behind its caller (`durable.Behind`): a STOW-RS request holds at most the
# Behind's limit of them (3) in memory beyond the part it reads, 24 MiB, not 3 of INGEST_MAX_BYTES.
BEHIND_MAX_BYTES = 8 << 20


def blob_seal(
    *,
    kind: str,
    data: bytes,
    replicate: bool = True,
    study_instance_uid: str = "",
    study_keys: dict[str, tuple[StudyKey, bytes]] | None = None,
    sync: bool = True,
    behind: Behind | None = None,
) -> Blob:
    """Encrypt `data` and write it to its store (quarantine for incoming bytes, else the primary and the replica).
    On disk when this returns (studies.storage.durable); with `sync=False`, a quarantined copy that the receipt
    recording it syncs with the others (`blob_files_sync`); with `behind` too, a copy written on a thread while the
    caller goes on (`durable.Behind`): the row is not to be recorded before `behind.wait()` has returned.

    With `study_instance_uid` (instances, thumbnails), the data key is wrapped by that study's key, so deleting
    the study's key files shreds the blob everywhere; without, by a key of the blob's own (`blob_delete` destroys
    it), so that no database backup can open the blob once it is deleted.
    Returns the row unsaved: the caller saves it (`blob_write`, or one bulk_create for several) in its transaction;
    if that rolls back or never runs, the ciphertext left behind cannot be read by anyone, since its wrapped data
    key was only in the row (the orphan job removes the file after a grace period). A replica store
    that fails does not fail the write: `replicated_at` stays empty and the catch-up job copies the blob
    (studies.services.fixity).
    `study_keys`, a dict the caller keeps for one request, holds the study keys already opened by study UID, so a
    request of many instances of one study looks its key up once.
    """
    tenant = current_tenant()
    blob_id = uuid.uuid4()
    data_key = envelope.new_key()
    store = QUARANTINE if kind == Blob.Kind.QUARANTINE else PRIMARY
    opened = study_keys.get(study_instance_uid) if study_keys is not None and study_instance_uid else None
    if opened is None:
        opened = study_key_ensure(
            tenant=tenant,
            study_instance_uid=study_instance_uid or own_key_uid(blob_id),
            replica_required=store == PRIMARY and replicate,
        )
        if study_keys is not None and study_instance_uid:
            study_keys[study_instance_uid] = opened
    study_key_row, study_key = opened
    wrapped_key = envelope.wrap_data_key_by_study(
        study_key=study_key, data_key=data_key, tenant_id=tenant.pk, blob_id=str(blob_id)
    )
    key_version = 0
    sealed, sha256 = envelope.encrypt_and_hash(data, data_key=data_key, tenant_id=tenant.pk, blob_id=str(blob_id))
    name = blob_name(tenant_id=tenant.pk, kind=kind, blob_id=blob_id)
    # A large copy is written at once as before: the ones behind are held in memory until written (BEHIND_MAX_BYTES).
    written_behind = behind is not None and not sync and store == QUARANTINE and len(sealed) <= BEHIND_MAX_BYTES
    stored_name = name if written_behind else _file_put(store=store, name=name, sealed=sealed, replace=False, sync=sync)
    blob = Blob(
        tenant=tenant,
        public_id=blob_id,
        kind=kind,
        storage_name=stored_name,
        size=len(data),
        sha256=sha256,
        wrapped_key=wrapped_key,
        key_version=key_version,
        study_key=study_key_row,
    )
    if written_behind:
        assert behind is not None

        def write() -> None:
            # The name the store gave (a fresh UUID's: taken only if the store already holds that very name).
            blob.storage_name = _file_put(store=store, name=name, sealed=sealed, replace=False, sync=False)

        behind.submit(write)
    if replicate and store == PRIMARY:
        try:
            _file_put(store=REPLICA, name=stored_name, sealed=sealed, replace=False)
            blob.replicated_at = timezone.now()
        except Exception:  # any failure of the replica store: the primary copy stands, the catch-up job copies it
            logger.warning("blob %s not replicated; the catch-up job will copy it", blob_id, exc_info=True)
    return blob


def blob_name(*, tenant_id: int, kind: str, blob_id: uuid.UUID) -> str:
    return f"t{tenant_id}/{kind}/{blob_id.hex[:2]}/{blob_id.hex}"


def blob_files_sync(blobs: list[Blob]) -> None:
    """The copies of `blobs` sealed with `sync=False`, made durable together (their data, then their folders, each
    once), in a folder store, before the door answers. A quarantined copy already gone was promoted by a worker,
    which synced it under its archive name before committing (`blob_promote`), and removed it."""
    by_store: dict[str, list[str]] = {}
    for blob in blobs:
        by_store.setdefault(_stores_for(blob)[0], []).append(blob.storage_name)
    for store, names in by_store.items():
        storage = storages[store]
        if type(storage) is FileSystemStorage and "save" not in vars(storage):
            files_sync((storage.path(name) for name in names), missing_ok=True)


@contextlib.contextmanager
def blob_files_synced_meanwhile(blobs: list[Blob]) -> Iterator[None]:
    """`blob_files_sync(blobs)` on a thread while the block runs (studies.storage.durable.synced_meanwhile): the
    C-STORE's quarantined copy written out while its receipt's statement waits for PostgreSQL; the block ends once
    both have."""
    with synced_meanwhile(lambda: blob_files_sync(blobs)):
        yield


def blob_study_key_ids(blobs: list[Blob]) -> dict[int, str]:
    """The key ids (hashes of study UIDs) of the study keys that wrap `blobs`, by StudyKey pk: those loaded with
    the blobs (`select_related("study_key")`) as they are, the others in one SELECT."""
    loaded: dict[int, str] = {}
    for blob in blobs:
        if blob.study_key_id is not None and _STUDY_KEY.is_cached(blob) and blob.study_key is not None:
            loaded[blob.study_key_id] = blob.study_key.key_id
    pks = {blob.study_key_id for blob in blobs if blob.study_key_id is not None} - loaded.keys()
    return loaded | (dict(StudyKey.objects.filter(pk__in=pks).values_list("pk", "key_id")) if pks else {})


_STUDY_KEY = Blob._meta.get_field("study_key")


def blob_promotable(*, blob: Blob, study_instance_uid: str, key_ids: dict[int, str]) -> bool:
    """True when a quarantined blob's data key is already wrapped by the key of study `study_instance_uid`
    (`key_ids` from `blob_study_key_ids`): its ciphertext can then enter the archive as it is (`blob_promote`),
    under the study's key like every instance, and nothing wrapped by the tenant key ever opens it."""
    if blob.kind != Blob.Kind.QUARANTINE or blob.study_key_id is None:
        return False
    return key_ids.get(blob.study_key_id) == study_key_id(
        tenant_id=blob.tenant_id, study_instance_uid=study_instance_uid
    )


def blob_promote(*, blob: Blob, sealed: bytes, kind: str = Blob.Kind.INSTANCE) -> list[str]:
    """Move a quarantined blob into the archive without decrypting or encrypting it again: its ciphertext
    `sealed` (as read and checked by `blob_read_sealed`) is written to the primary store and its replica under
    the archive's name, and the row (the same row: the same id, the same data key, wrapped by the study's key
    since receipt) becomes a blob of `kind`. Returns the changed fields; the caller saves the row (one UPDATE, or
    one bulk_update for a batch) in the transaction that indexes it. The quarantine file goes once that commits.

    The archive name follows from the blob's id, so a second attempt after a worker died overwrites the first
    attempt's copies instead of leaving orphans. A replica store that fails does not fail the promotion:
    `replicated_at` stays empty and the catch-up job copies the blob, as for `blob_write`."""
    assert blob.kind == Blob.Kind.QUARANTINE
    assert blob.study_key_id is not None
    quarantined = blob.storage_name
    name = blob_name(tenant_id=blob.tenant_id, kind=kind, blob_id=blob.public_id)
    if not _file_link(source=(QUARANTINE, quarantined), store=PRIMARY, name=name, size=len(sealed)):
        blob_sealed_put(store=PRIMARY, name=name, sealed=sealed)
    blob.kind, blob.storage_name, blob.replicated_at = kind, name, None
    try:
        blob_sealed_put(store=REPLICA, name=name, sealed=sealed)
        blob.replicated_at = timezone.now()
    except Exception:  # any failure of the replica store: the primary copy stands, the catch-up job copies it
        logger.warning("blob %s not replicated; the catch-up job will copy it", blob.public_id, exc_info=True)

    def remove_quarantined() -> None:
        try:
            storages[QUARANTINE].delete(quarantined)
        except OSError:
            logger.warning("could not delete blob %s from %s", blob.public_id, QUARANTINE)

    transaction.on_commit(remove_quarantined)
    return ["kind", "storage_name", "replicated_at", "updated_at"]


def _stores_for(blob: Blob | BlobRef) -> list[str]:
    return [QUARANTINE] if blob.kind == Blob.Kind.QUARANTINE else [PRIMARY, REPLICA]


def blob_sealed_read(*, store: str, name: str) -> bytes:
    """The ciphertext of one copy, through the Storage API (a folder or S3). A missing copy raises OSError
    (FileNotFoundError, also from django-storages' S3 backend).

    A folder store (exactly Django's FileSystemStorage, as `_file_put`) is read with one os.read of the file's
    size, the path checked by `storage.path` as `FileSystemStorage.open` does: without Python's buffered file
    object and Django's File around it, which cost about a third of reading a 0.5 MB copy from the page cache
    (18 against 13 us; a WADO-RS series reads one copy per instance)."""
    storage = storages[store]
    if type(storage) is not FileSystemStorage or "open" in vars(storage):
        with storage.open(name, "rb") as handle:
            return handle.read()
    fd = os.open(storage.path(name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        pieces = [os.read(fd, size + 1)]  # one byte more than the size: a file that grew is seen
        if len(pieces[0]) == size:
            return pieces[0]  # the whole file, and the end of it (a regular file reads short only at its end)
        while pieces[-1]:  # a short read, or a file that grew meanwhile: read on to the end
            pieces.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return b"".join(pieces)


def blob_sealed_check(*, blob: Blob, sealed: bytes, data_key: bytes) -> bytes:
    """The plaintext of one copy's ciphertext, or DecryptionError when it does not decrypt to the row's size and
    SHA-256."""
    data = envelope.decrypt(sealed, data_key=data_key, tenant_id=blob.tenant_id, blob_id=str(blob.public_id))
    if len(data) != blob.size or hashlib.sha256(data).hexdigest() != blob.sha256:
        raise envelope.DecryptionError("the decrypted bytes do not match the stored hash")
    return data


def blob_sealed_put(*, store: str, name: str, sealed: bytes) -> None:
    """Write a copy under exactly `name`, replacing what is there: a folder store would otherwise save beside it
    under another name, which no row references."""
    storage = storages[store]
    if _file_put(store=store, name=name, sealed=sealed, replace=True):
        return
    if not getattr(storage, "file_overwrite", False):  # S3Storage overwrites in place: no delete request needed
        storage.delete(name)
    stored = storage.save(name, ContentFile(sealed))
    if stored != name:
        storage.delete(stored)
        raise OSError(f"the {store} store saved the copy under another name")


def blob_sealed_open(
    *,
    blob: Blob | BlobRef,
    sealed: bytes | memoryview,
    data_key: bytes | AESGCM,
    scratch: bytearray | None = None,
    lead: bytes = b"",
    blob_id: str = "",
    views: bool = False,
) -> list[bytes] | list[memoryview]:
    """The plaintext of one copy's ciphertext, as its chunks (each up to the envelope's chunk size, every one
    authenticated), or DecryptionError when a tag fails or the size is not the row's. No second SHA-256: the
    module's docstring says why the tags are the check, and `blob_sealed_check` keeps the hash for fixity.
    `scratch`, `lead`: see `envelope.decrypt_chunks` (the chunks returned never refer to `scratch`; `lead` comes
    first, and is not counted in the size; `views`: a one-chunk copy as a view of `scratch`, valid until its next
    use). `blob_id`: `str(blob.public_id)` when the caller has it already; `data_key` may be its AESGCM, made
    ahead (`blob_reads_prepare`)."""
    chunks = envelope.decrypt_chunks(
        sealed,
        data_key=data_key,
        tenant_id=blob.tenant_id,
        blob_id=blob_id or str(blob.public_id),
        scratch=scratch,
        lead=lead,
        views=views,
    )
    if sum(map(len, chunks)) - len(lead) != blob.size:
        raise envelope.DecryptionError("the decrypted bytes are not the stored size")
    return chunks


def _file_link(*, source: tuple[str, str], store: str, name: str, size: int) -> bool:
    """Give the quarantined file `source` (store, name) the name `name` in `store` too, by a hard link, when both
    are folder stores on one file system: the primary copy of a promoted blob without writing its bytes again. The
    file is the very ciphertext just read and checked (quarantine files are written once, never rewritten), and
    its size is checked again here. Through a temporary name and a rename, as `_file_put(replace=True)`, so a
    second attempt replaces the first. False (nothing done) when it cannot: the caller writes the copy instead."""
    source_store, source_name, storage = storages[source[0]], source[1], storages[store]
    for one in (source_store, storage):
        if type(one) is not FileSystemStorage or "save" in vars(one):
            return False
    storage = cast(FileSystemStorage, storage)
    try:
        source_path = source_store.path(source_name)
        path = storage.path(name)
        source_stat = os.stat(source_path)
        if source_stat.st_size != size:
            return False
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(source_stat, os.stat(path)):
                return True  # linked already, by an attempt that did not commit (rename would leave the temporary)
        made = _folder_make(storage, os.path.dirname(path))
        target = f"{path}.{uuid.uuid4().hex}.tmp"
        os.link(source_path, target)
    except (OSError, ValueError):  # another file system (EXDEV), no hard links, a name outside the folder
        return False
    try:
        if storage.file_permissions_mode is not None:
            os.chmod(target, storage.file_permissions_mode)
        os.replace(target, path)
        linked(path, made)  # the copy's data and its new name on disk before the caller commits
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(target)
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)  # still there only if `path` was linked to the file meanwhile (rename then does nothing)
    return True


def _folder_make(storage: FileSystemStorage, folder: str) -> list[str]:
    """The folder of a file about to be written, with the store's permissions (as `FileSystemStorage.save`); the
    folders it had to make, outermost first (each a new entry of its parent, which
    studies.storage.durable.name_given makes durable)."""
    made: list[str] = []
    missing = folder
    while missing and not os.path.isdir(missing):
        made.insert(0, missing)
        parent = os.path.dirname(missing)
        if parent == missing:
            break
        missing = parent
    if not made:
        return made
    if storage.directory_permissions_mode is not None:
        old_umask = os.umask(0o777 & ~storage.directory_permissions_mode)
        try:
            os.makedirs(folder, storage.directory_permissions_mode, exist_ok=True)
        finally:
            os.umask(old_umask)
    else:
        os.makedirs(folder, exist_ok=True)
    return made


def _file_put(*, store: str, name: str, sealed: bytes, replace: bool, sync: bool = True) -> str:
    """Write `sealed` under `name` in a folder store (exactly Django's FileSystemStorage) in one write, without the
    storage API's existence checks and 64 KiB chunks: 3 of these per instance on the ingest path. The same path
    checks (`storage.path` refuses a name outside the folder) and permissions as `FileSystemStorage.save`.

    `sync`: the copy is on disk, its name too, when this returns (studies.storage.durable; within its `together()`
    when that block ends); False: its write-back only started, for a receipt that records several to sync them
    together (`blob_files_sync`).

    `replace`: through a temporary file in the same folder and a rename, so the copy under `name` is either the
    old one or the whole new one; returns `name`. Otherwise the name must be new (a fresh UUID): if it is taken
    after all, `storage.save` picks another, which is returned. For any other store: `storage.save` when not
    `replace`, and "" when `replace` (the caller then uses the storage API)."""
    storage = storages[store]
    # Exactly the folder store, its own `save` not replaced on the object (a test's failing store): else the API.
    if type(storage) is not FileSystemStorage or "save" in vars(storage):
        return "" if replace else storage.save(name, ContentFile(sealed))
    path = storage.path(name)
    made = _folder_make(storage, os.path.dirname(path))
    target = f"{path}.{uuid.uuid4().hex}.tmp" if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags, 0o666)
    except FileExistsError:
        if replace:
            raise
        return storage.save(name, ContentFile(sealed))
    try:
        with os.fdopen(fd, "wb") as out:  # closed whatever fails below
            if not (store == REPLICA and _direct_write(fd, sealed)):
                out.write(sealed)
                out.flush()
            file_written(fd, sync=sync)  # studies.storage.durable: on disk before it counts
        if storage.file_permissions_mode is not None:
            os.chmod(target, storage.file_permissions_mode)
        if replace:
            os.replace(target, path)
        name_given(path, made, sync=sync)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    return name


# A replica copy is written past the page cache (O_DIRECT), from an aligned buffer of each thread's, in pieces of at
# most this many bytes (a multiple of DIRECT_ALIGN).
DIRECT_ALIGN = 4096
DIRECT_PIECE = 1 << 20


class _DirectBuffer(threading.local):
    """A thread's page-aligned buffer for `_direct_write`, made at its first use."""

    buffer: mmap.mmap | None = None


_direct_buffer = _DirectBuffer()


def _direct_write(fd: int, sealed: bytes) -> bool:
    """Write `sealed` to the new, empty file `fd` past the page cache: True once written (its size exact), False,
    with nothing written, where the file system takes no O_DIRECT (the caller then writes it as usual).

    Why (issue 10): the replica copy is read only by the fixity and catch-up jobs and on a failover, so caching it
    only takes memory; and on this virtual machine a page the page cache takes anew costs far more than its copy
    (the host backs it again at its first touch: 0.53 MB into a new file took about 0.12 ms of CPU quiet, its
    creation aside, and about 1 ms under the STOW-RS load, against 0.015 ms into pages already cached;
    docs/BENCHMARKS.md, session 14). The pieces
    are whole blocks of DIRECT_ALIGN bytes, the last padded with zeros; the file is then cut to its size. Its
    durability is as for any copy (`file_written`, then the name): fdatasync writes the size and the blocks'
    allocation, and flushes the disk's cache."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct)
    except OSError:
        return False  # EINVAL: this file system has no direct I/O
    buffer = _direct_buffer.buffer
    if buffer is None:
        buffer = _direct_buffer.buffer = mmap.mmap(-1, DIRECT_PIECE)
    view, size, offset = memoryview(sealed), len(sealed), 0
    try:
        while offset < size:
            piece = min(DIRECT_PIECE, size - offset)
            padded = -(-piece // DIRECT_ALIGN) * DIRECT_ALIGN
            buffer[:piece] = view[offset : offset + piece]
            if padded > piece:
                buffer[piece:padded] = bytes(padded - piece)
            written = os.pwrite(fd, memoryview(buffer)[:padded], offset)
            if written != padded:
                raise OSError(errno.EIO, f"a direct write wrote {written} of {padded} bytes")
            offset += piece
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno != errno.EINVAL or offset:
            raise
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)  # the file system refused the alignment: written as usual
        return False
    return True


def blob_data_key(*, blob: Blob | BlobRef, tenant_keys: dict[tuple[int, int], bytes] | None = None) -> bytes:
    """The unwrapped data key of `blob`, through its study key or its tenant key."""
    if blob.study_key_id is not None:
        study_key = study_key_cache.get((blob.tenant_id, blob.study_key_id))
        if study_key is None:
            try:
                row = blob.study_key
            except StudyKey.DoesNotExist as exc:
                raise KeyUnavailable("the study key was destroyed") from exc
            assert row is not None
            study_key = study_key_open(row)
        return envelope.unwrap_data_key_by_study(
            study_key=study_key,
            wrapped=bytes(blob.wrapped_key),
            tenant_id=blob.tenant_id,
            blob_id=str(blob.public_id),
        )
    cache_key = (blob.tenant_id, blob.key_version)
    kek = tenant_keys.get(cache_key) if tenant_keys is not None else None
    if kek is None:
        kek = tenant_key(blob.key_version)
        if tenant_keys is not None:
            tenant_keys[cache_key] = kek
    return envelope.unwrap_data_key(
        tenant_key=kek, wrapped=bytes(blob.wrapped_key), tenant_id=blob.tenant_id, blob_id=str(blob.public_id)
    )


def blob_read_sealed(*, blob: Blob) -> tuple[bytes, bytes]:
    """The ciphertext and the plaintext of the first copy whose every chunk authenticates and whose plaintext is
    the row's size: for a quarantined blob that may then be promoted as it is (`blob_promote`). Raises
    BlobUnreadable as `blob_read`.

    No second SHA-256 of the plaintext (0.26 ms of the worker's CPU per 0.53 MB instance): as for `blob_read`, the
    tags are the check. The data key is random per blob and exists only wrapped in this row, so no one but the
    door that sealed the blob (and hashed the same bytes in the same pass, `envelope.encrypt_and_hash`) can make a
    ciphertext that authenticates; each chunk's tag binds the tenant, the blob id, its index and whether it is the
    last, so a copy altered, cut, extended or moved fails. The fixity job still hashes every stored copy."""
    try:
        data_key = blob_data_key(blob=blob)
    except (KeyUnavailable, envelope.DecryptionError) as exc:
        logger.warning("blob %s: its key cannot be opened (%s)", blob.public_id, exc.__class__.__name__)
        raise BlobUnreadable(f"blob {blob.public_id} is unreadable (its key cannot be opened)") from exc
    failures = []
    for store in _stores_for(blob):
        try:
            sealed = blob_sealed_read(store=store, name=blob.storage_name)
            return sealed, b"".join(blob_sealed_open(blob=blob, sealed=sealed, data_key=data_key))
        except (OSError, envelope.DecryptionError) as exc:
            failures.append(f"{store}: {exc.__class__.__name__}")
            logger.warning("blob %s unreadable from %s (%s)", blob.public_id, store, exc.__class__.__name__)
    raise BlobUnreadable(f"blob {blob.public_id} is unreadable ({'; '.join(failures)})")


def blob_read(*, blob: Blob | BlobRef, tenant_keys: dict[tuple[int, int], bytes] | None = None) -> bytes:
    """The plaintext of `blob`, authenticated; from the replica when the primary copy is gone or damaged.

    `tenant_keys`, a dict the caller keeps for one request (a series retrieval), holds the unwrapped tenant keys
    so that each is read and unwrapped once per request rather than once per blob."""
    return b"".join(blob_read_chunks(blob=blob, tenant_keys=tenant_keys))


def blob_read_chunks(
    *, blob: Blob | BlobRef, tenant_keys: dict[tuple[int, int], bytes] | None = None, lead: bytes = b""
) -> list[bytes]:
    """`blob_read`'s plaintext as the envelope's chunks, never joined (a caller that writes them out one by one
    saves a copy of the blob). Every chunk of the copy is authenticated before any is returned, so a copy damaged
    in its last chunk gives none of its bytes and the replica is tried. Raises BlobUnreadable as `blob_read`.

    `lead`: bytes returned before the plaintext, at the head of its first chunk where that costs no copy more
    (`envelope.decrypt_chunks`): `b"".join(result) == lead + plaintext`. A WADO-RS part's header, so the part
    leaves in one write instead of a small one then the instance. (`blob_reads_prepare` then
    `blob_read_prepared`, for one blob.)"""
    return cast(list[bytes], blob_read_prepared(blob_reads_prepare([blob], tenant_keys=tenant_keys)[0], lead=lead))


class PreparedRead(NamedTuple):
    """What `blob_read_prepared` needs of one blob besides its bytes, made ahead by `blob_reads_prepare`."""

    blob: Blob | BlobRef
    blob_id: str  # str(blob.public_id): the chunks' associated data name it
    aead: AESGCM | None  # AES-GCM under its data key; None when the key cannot be opened (`failure` says why)
    failure: str
    path: str | None  # the primary copy's file in a folder store (else None: the store is asked when read)


def blob_reads_prepare(
    blobs: list[Blob] | list[BlobRef] | list[Blob | BlobRef], tenant_keys: dict[tuple[int, int], bytes] | None = None
) -> list[PreparedRead]:
    """For each of `blobs`, in order, what reading it needs before its bytes: its data key unwrapped (its study
    key from the process's cache, else read from its row: in the caller's tenant scope) and made into its AES-GCM,
    its id as text and the path of its primary copy in a folder store. A key that cannot be opened is recorded,
    not raised: `blob_read_prepared` raises BlobUnreadable for that blob when it comes to it, as
    `blob_read_chunks` does.

    Why ahead (issue 10, WADO-RS): these steps cost a few microseconds per blob one after the other, and several
    times that each when done between two instances' reads, once the instance before has passed half a megabyte
    through the CPU's caches and the interpreter's code and data have to come back from memory (a data key took
    about 40 us of a gunicorn thread's CPU there against 1.2 us in a loop: docs/BENCHMARKS.md, "h5 branch,
    session 6"). `tenant_keys`: see `blob_read`."""
    prepared = []
    primary = storages[PRIMARY]
    folder = type(primary) is FileSystemStorage and "open" not in vars(primary)
    for blob in blobs:
        try:
            aead, failure = AESGCM(blob_data_key(blob=blob, tenant_keys=tenant_keys)), ""
        except (KeyUnavailable, envelope.DecryptionError) as exc:
            aead, failure = None, exc.__class__.__name__
        path = primary.path(blob.storage_name) if folder and blob.kind != Blob.Kind.QUARANTINE else None
        prepared.append(PreparedRead(blob, str(blob.public_id), aead, failure, path))
    return prepared


def blob_read_prepared(
    read: PreparedRead,
    *,
    lead: bytes = b"",
    views: bool = False,
    buffers: tuple[memoryview, bytearray] | None = None,
) -> list[bytes] | list[memoryview]:
    """`blob_read_chunks` of a blob prepared by `blob_reads_prepare`: the same copies tried in the same order (the
    primary, then the replica), the same checks, the same BlobUnreadable. Touches no database, so it needs no
    tenant scope of its own (the rows and keys were read in the caller's, when prepared).

    `views`: a blob of one envelope chunk (a CT slice) comes back as one view of this thread's plaintext buffer,
    `lead` then the plaintext, copied nowhere (`envelope.decrypt_chunks`), for a caller that writes it out before
    this thread reads another blob: the next read overwrites it. A larger blob comes back as copies.

    `buffers`: the (ciphertext, plaintext) buffers to read and decrypt into instead of this thread's own
    (`BlobReadAhead`, whose thread reads into buffers its caller's thread owns); a view then refers to the given
    plaintext buffer."""
    blob = read.blob
    if read.aead is None:
        logger.warning("blob %s: its key cannot be opened (%s)", blob.public_id, read.failure)
        raise BlobUnreadable(f"blob {blob.public_id} is unreadable (its key cannot be opened)")
    failures = []
    buffer, scratch = buffers if buffers is not None else _read_buffers()
    sealed: bytes | memoryview | None
    for store in _stores_for(blob):
        try:
            path = read.path if store == PRIMARY else None
            sealed = blob_sealed_read_into(store=store, name=blob.storage_name, buffer=buffer, path=path)
            if sealed is None:  # not a folder store, or larger than the buffer
                sealed = blob_sealed_mapped(store=store, name=blob.storage_name)
            if sealed is None:
                sealed = blob_sealed_read(store=store, name=blob.storage_name)
            return blob_sealed_open(
                blob=blob, sealed=sealed, data_key=read.aead, scratch=scratch, lead=lead, blob_id=read.blob_id,
                views=views,
            )  # fmt: skip
        except (OSError, envelope.DecryptionError) as exc:
            failures.append(f"{store}: {exc.__class__.__name__}")
            logger.warning("blob %s unreadable from %s (%s)", blob.public_id, store, exc.__class__.__name__)
    raise BlobUnreadable(f"blob {blob.public_id} is unreadable ({'; '.join(failures)})")


# The buffers a thread's reads reuse (`blob_read_chunks`, issue 10): the ciphertext of a copy of one envelope chunk
# (its header, up to 1 MiB and its tag; one byte more, to see a file that grew) and the plaintext of a chunk. A CT
# slice (0.5 MB) is read into the first and decrypted into the second, both still in the CPU's cache from the
# instance before, then copied out as bytes (with the WADO-RS part's header before it: `lead`), where before the
# copy was mapped (page tables made and removed for every page) and AES-GCM wrote a new buffer it had first filled
# with zeros. docs/BENCHMARKS.md, "h3 branch, session 5", has the figures. A copy larger than the buffer (several
# chunks: a multi-frame object) is mapped or read as before, and still decrypted chunk by chunk into the second
# buffer, so what a thread keeps is bounded: 2 MiB, made at its first read, in the threads that read blobs.
READ_BUFFER_BYTES = envelope.HEADER.size + envelope.DEFAULT_CHUNK + envelope.TAG_BYTES + 1
# Room in the plaintext's buffer for a part's header before a one-chunk blob (`blob_read_prepared`'s `views`: the
# header and the instance written from it in one write, neither copied).
LEAD_ROOM = 4096


class _ReadBuffers(threading.local):
    sealed: memoryview | None = None  # per thread: each thread's own attributes, these defaults until its first read
    plain: bytearray | None = None


_buffers = _ReadBuffers()


def _read_buffers() -> tuple[memoryview, bytearray]:
    """This thread's buffers (the ciphertext's, the plaintext's), made at its first read."""
    if _buffers.sealed is None or _buffers.plain is None:
        _buffers.sealed = memoryview(bytearray(READ_BUFFER_BYTES))
        _buffers.plain = bytearray(LEAD_ROOM + envelope.DEFAULT_CHUNK)
    return _buffers.sealed, _buffers.plain


# How many blobs `BlobReadAhead` reads and decrypts ahead of the one its caller is writing out.
READ_AHEAD = 2


class _AheadBuffers(threading.local):
    sealed: memoryview | None = None  # per thread, as `_ReadBuffers`: made at the thread's first read-ahead
    plains: list[bytearray] | None = None


_ahead_buffers = _AheadBuffers()


class BlobReadAhead:
    """Reads of prepared blobs (`blob_read_prepared`, the same copies, checks and BlobUnreadable) made on a thread of
    their own, up to `depth` blobs ahead of the one the caller is writing out, so that reading the next copies and
    decrypting them (os.readv, AES-GCM's `decrypt_into`: both release the GIL) run on the second core while the
    caller's thread writes the current part to the socket (issue 10, WADO-RS: docs/BENCHMARKS.md, "h3 branch,
    session 8").

    `submit(read, lead)` queues a read; `result()` returns the oldest submitted read's chunks, or raises its
    BlobUnreadable, so a caller that takes the results in order and writes each before it takes the next sends
    nothing of a blob that fails (nor of any after it, when it stops there). At most `depth` reads are submitted and
    not yet taken (`submit` refuses more), so memory stays bounded whatever the number of blobs: `depth` + 1
    plaintext buffers and one ciphertext buffer, the calling thread's own, made at its first read-ahead and reused
    from one request to the next. With `views`, a one-chunk blob comes back as a view of one of those plaintext
    buffers (used in turn), valid until the second `submit` after it was taken: a caller that takes a result,
    submits one more read and writes the view out before it takes the next never sees it overwritten. `close()`
    (idempotent) cancels what has not started and waits for the read in progress, so no thread outlives the
    request (a client that disconnects: the server closes the body).

    Touches no database (the rows and keys were read when prepared), so it needs no tenant scope, and the thread
    holds no database connection."""

    def __init__(self, *, depth: int = READ_AHEAD, views: bool = False) -> None:
        sealed, plains = _ahead_buffers.sealed, _ahead_buffers.plains
        if sealed is None or plains is None or len(plains) < depth + 1:
            sealed = memoryview(bytearray(READ_BUFFER_BYTES))
            plains = [bytearray(LEAD_ROOM + envelope.DEFAULT_CHUNK) for _ in range(depth + 1)]
        # Taken from the thread while this read-ahead may write into them, and given back by `close()` on that
        # thread: a read-ahead made on it before this one is closed (an answer dropped before the server took it,
        # its body started: studies.dicomweb.wado) reads into buffers of its own, never into these.
        _ahead_buffers.sealed = _ahead_buffers.plains = None
        self._held: tuple[memoryview, list[bytearray]] | None = (sealed, plains)
        self._owner = threading.get_ident()
        self._sealed = sealed
        self._plains = plains[: depth + 1]
        self._depth = depth
        self._views = views
        self._submitted = 0
        self._pending = 0
        # SimpleQueue (C, one lock each way) and a plain thread rather than concurrent.futures: with an executor and
        # its Futures a series cost 2.1-5.5 ms of CPU more than without reading ahead, with these 1.0-4.0 ms
        # (docs/BENCHMARKS.md, "h3 branch, session 8").
        self._jobs: queue.SimpleQueue[tuple[PreparedRead, bytes, bytearray] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[list[bytes] | list[memoryview] | BaseException] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None and not self._closed:
            read, lead, plain = job
            try:
                self._results.put(blob_read_prepared(read, lead=lead, views=self._views, buffers=(self._sealed, plain)))
            except BaseException as exc:  # handed to the caller, which raises it in its turn
                self._results.put(exc)

    def submit(self, read: PreparedRead, *, lead: bytes = b"") -> None:
        if self._closed:
            raise RuntimeError("this read-ahead is closed")
        if self._pending >= self._depth:
            raise RuntimeError("take a result before submitting more reads")
        if self._thread is None:
            # In a copy of the caller's context: its warnings (a damaged copy read from the other store) carry the
            # request's id, as the same read on the request's thread would log it.
            context = contextvars.copy_context()
            self._thread = threading.Thread(target=context.run, args=(self._run,), name="blob-read-ahead", daemon=True)
            self._thread.start()
        self._jobs.put((read, lead, self._plains[self._submitted % len(self._plains)]))
        self._submitted += 1
        self._pending += 1

    @property
    def pending(self) -> int:
        """Reads submitted and not yet taken."""
        return self._pending

    def result(self) -> list[bytes] | list[memoryview]:
        if not self._pending:
            raise RuntimeError("no read submitted")
        self._pending -= 1
        got = self._results.get()
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        self._closed = True  # the reads not started are skipped
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        self._pending = 0
        if self._held is not None and threading.get_ident() == self._owner:
            _ahead_buffers.sealed, _ahead_buffers.plains = self._held  # for this thread's next read-ahead
        self._held = None


def blob_sealed_read_into(*, store: str, name: str, buffer: memoryview, path: str | None = None) -> memoryview | None:
    """A folder store's copy read into `buffer` (a thread's own, `_read_buffers`), as a view of the bytes read, for
    a read that decrypts it at once and keeps nothing of it; None where the copy does not fit (it needs one byte
    more than its size, to see a file that grew) or the store is not a folder: the caller maps or reads it
    (`blob_sealed_mapped`, `blob_sealed_read`). A missing copy raises OSError; a file cut short gives the bytes
    there are (its tags then fail), as `blob_sealed_read` does. The view is valid until the thread's next read.
    `path`: `storage.path(name)` of this folder store, when the caller has it already (`blob_reads_prepare`)."""
    if path is None:
        storage = storages[store]
        if type(storage) is not FileSystemStorage or "open" in vars(storage):
            return None
        path = storage.path(name)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        wanted = os.fstat(fd).st_size + 1  # one byte more than the size: a file that grew is seen
        if wanted > len(buffer):
            return None
        got = os.readv(fd, [buffer[:wanted]])  # the size, or one byte more for a file that grew
        while 0 < got < wanted - 1:  # shorter than its size (a regular file reads short only at its end): read on
            more = os.readv(fd, [buffer[got:wanted]])
            if not more:
                break
            got += more
    finally:
        os.close(fd)
    return None if got == wanted else buffer[:got]  # a file that grew since fstat is read the other way, whole


# madvise(MADV_POPULATE_READ), Linux 5.14 and later (Python 3.11 has no name for it): the kernel maps every page
# of the copy at once and returns an error, instead of raising SIGBUS later, when a page cannot be read.
MADV_POPULATE_READ: int | None = getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform.startswith("linux") else None
_mapping = {"usable": MADV_POPULATE_READ is not None}


def blob_sealed_mapped(*, store: str, name: str) -> memoryview | None:
    """The ciphertext of a folder store's copy mapped read-only from the page cache, for a read that decrypts it
    at once (`blob_read_chunks`, for a copy larger than its thread's buffer: `blob_sealed_read_into`), or None
    where that cannot be done safely (another store, another system, a
    kernel without MADV_POPULATE_READ, an empty file): the caller then reads the copy (`blob_sealed_read`).

    Why (issue 10): reading a 0.5 MB copy copies it from the page cache into a new buffer that AES-GCM then reads
    again; decrypting from the mapping skips that copy. The 60 copies of a CT series (31.5 MB) through
    `blob_read_chunks`: 8.5-8.9 ms of CPU mapped against 9.4-9.9 read (docs/BENCHMARKS.md, "h4 branch, session 4").

    Why it is safe: every page is mapped and read in before this returns (MADV_POPULATE_READ), so a copy on a
    failing disk is an OSError here, the replica is tried as for a failed read, instead of SIGBUS in the
    decryption. The archive's files are written once and replaced only by a rename (`_file_put`), never
    truncated or rewritten in place, so the mapped bytes cannot change or shrink under the decryption; a copy
    altered before it is mapped fails its tags like a read one. Only one instance's copy is mapped at a time,
    and it is unmapped as soon as its plaintext is made (the view's last reference goes; nothing keeps it)."""
    if not _mapping["usable"] or MADV_POPULATE_READ is None:
        return None
    storage = storages[store]
    if type(storage) is not FileSystemStorage or "open" in vars(storage):
        return None
    fd = os.open(storage.path(name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        if not size:
            return None
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except ValueError:  # the file is shorter than it was a moment ago: read what there is (and fail its tags)
        return None
    finally:
        os.close(fd)
    try:
        mapped.madvise(MADV_POPULATE_READ)
    except OSError as exc:
        mapped.close()
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise  # a page that cannot be read (EIO, EFAULT, EHWPOISON): this copy has failed
        _mapping["usable"] = False  # a kernel before 5.14: read the copies instead, from now on
        logger.info("MADV_POPULATE_READ is not supported here: blob copies are read, not mapped")
        return None
    return memoryview(mapped)


def blob_delete(*, blob: Blob) -> None:
    """Delete the row with its wrapped key now, and the ciphertext from every store once the transaction commits,
    so that a rollback never loses bytes that are still referenced. A blob with a key of its own (`own_key_uid`)
    has that key destroyed too (its files leave both stores after the commit), so a database backup taken before
    cannot open a saved copy of it; an instance's or thumbnail's study key goes with its study
    (studies.services.retention)."""
    stores, name, public_id = _stores_for(blob), blob.storage_name, blob.public_id
    own_key_id = study_key_id(tenant_id=blob.tenant_id, study_instance_uid=own_key_uid(public_id))
    own_key = blob.study_key_id

    def remove_files() -> None:
        for store in stores:
            try:
                storages[store].delete(name)
            except OSError:
                logger.warning("could not delete blob %s from %s", public_id, store)

    if blob.kind == Blob.Kind.QUARANTINE:
        # One DELETE instead of Django's collector (four look-ups of rows that may point at a blob): a quarantined
        # object is referenced only by its IngestItem, whose caller has cleared the reference; were it referenced
        # still, the database's foreign keys (checked at commit) would refuse the transaction.
        Blob.objects.filter(pk=blob.pk, kind=Blob.Kind.QUARANTINE)._raw_delete(Blob.objects.db)
    else:
        blob.delete()
    if own_key is not None:
        row = StudyKey.objects.filter(pk=own_key, key_id=own_key_id).first()
        if row is not None:
            study_key_destroy(row=row)
    transaction.on_commit(remove_files)


def blob_quarantined_shred(*, study_key: StudyKey) -> int:
    """Delete the quarantined blobs sealed under `study_key` (objects received for the study and kept for
    review: refused, or in conflict), before the key itself is destroyed: their rows now (their ingest items keep
    their verdicts, without the copy), their files once the transaction commits. Returns how many."""
    quarantined = list(Blob.objects.filter(study_key=study_key, kind=Blob.Kind.QUARANTINE))
    names = [blob.storage_name for blob in quarantined]
    if not quarantined:
        return 0
    # Django's collector, not a raw delete: the ingest items that point at these rows are set to none.
    Blob.objects.filter(pk__in=[blob.pk for blob in quarantined]).delete()

    def remove_files() -> None:
        for name in names:
            try:
                storages[QUARANTINE].delete(name)
            except OSError:
                logger.warning("could not delete a quarantined blob from %s", QUARANTINE)

    transaction.on_commit(remove_files)
    return len(quarantined)
