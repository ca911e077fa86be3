"""Encrypted blobs in Django storages: the primary store, its replica, and the quarantine.

Every blob is written encrypted (studies.storage.envelope) under a name that starts with its tenant's id, with a
fresh data key wrapped by its study's key when it belongs to one study (studies.storage.keys), else by a key of its
own (exports, training certificates, quarantined uploads: `own_key_uid`), kept like a study key as files in
the stores and destroyed with the blob; every read decrypts, checks size and SHA-256 against the row, and falls
back to the replica when the primary copy is missing or damaged. Callers run inside a tenant scope.

No data key is ever wrapped by the tenant key alone any more (blobs stored before are, until `rotate_keys
--adopt-study-keys`): a database backup holds every tenant key it saw, so such a blob would outlive its
deletion in any old backup.
"""

from __future__ import annotations

import hashlib
import logging
import uuid

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from studies.models import Blob, StudyKey
from studies.storage import envelope
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


class BlobUnreadable(Exception):
    """Neither the primary nor the replica copy decrypts to the bytes the row describes."""


def blob_write(*, kind: str, data: bytes, replicate: bool = True, study_instance_uid: str = "") -> Blob:
    """Encrypt `data` and write it to its store (quarantine for incoming bytes, else the primary and the replica).

    With `study_instance_uid` (instances, thumbnails), the data key is wrapped by that study's key, so deleting
    the study's key files shreds the blob everywhere; without, by a key of the blob's own (`blob_delete` destroys
    it), so that no database backup can open the blob once it is deleted.
    The row is saved by the caller's transaction; if that rolls back, the ciphertext left behind cannot be read
    by anyone, since its key went with the row (the orphan job removes it after a grace period). A replica store
    that fails does not fail the write: `replicated_at` stays empty and the catch-up job copies the blob
    (studies.services.fixity).
    """
    tenant = current_tenant()
    blob_id = uuid.uuid4()
    data_key = envelope.new_key()
    store = QUARANTINE if kind == Blob.Kind.QUARANTINE else PRIMARY
    study_key_row, study_key = study_key_ensure(
        tenant=tenant,
        study_instance_uid=study_instance_uid or own_key_uid(blob_id),
        replica_required=store == PRIMARY and replicate,
    )
    wrapped_key = envelope.wrap_data_key_by_study(
        study_key=study_key, data_key=data_key, tenant_id=tenant.pk, blob_id=str(blob_id)
    )
    key_version = 0
    sealed = envelope.encrypt(data, data_key=data_key, tenant_id=tenant.pk, blob_id=str(blob_id))
    name = f"t{tenant.pk}/{kind}/{blob_id.hex[:2]}/{blob_id.hex}"
    stored_name = storages[store].save(name, ContentFile(sealed))
    blob = Blob(
        tenant=tenant,
        public_id=blob_id,
        kind=kind,
        storage_name=stored_name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        wrapped_key=wrapped_key,
        key_version=key_version,
        study_key=study_key_row,
    )
    if replicate and store == PRIMARY:
        try:
            storages[REPLICA].save(stored_name, ContentFile(sealed))
            blob.replicated_at = timezone.now()
        except Exception:  # any failure of the replica store: the primary copy stands, the catch-up job copies it
            logger.warning("blob %s not replicated; the catch-up job will copy it", blob_id, exc_info=True)
    blob.save()
    return blob


def _stores_for(blob: Blob) -> list[str]:
    return [QUARANTINE] if blob.kind == Blob.Kind.QUARANTINE else [PRIMARY, REPLICA]


def blob_sealed_read(*, store: str, name: str) -> bytes:
    """The ciphertext of one copy, through the Storage API (a folder or S3). A missing copy raises OSError
    (FileNotFoundError, also from django-storages' S3 backend)."""
    with storages[store].open(name, "rb") as handle:
        return handle.read()


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
    if not getattr(storage, "file_overwrite", False):  # S3Storage overwrites in place: no delete request needed
        storage.delete(name)
    stored = storage.save(name, ContentFile(sealed))
    if stored != name:
        storage.delete(stored)
        raise OSError(f"the {store} store saved the copy under another name")


def _decrypt_from(store: str, blob: Blob, data_key: bytes) -> bytes:
    return blob_sealed_check(blob=blob, sealed=blob_sealed_read(store=store, name=blob.storage_name), data_key=data_key)


def blob_data_key(*, blob: Blob, tenant_keys: dict[tuple[int, int], bytes] | None = None) -> bytes:
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


def blob_read(*, blob: Blob, tenant_keys: dict[tuple[int, int], bytes] | None = None) -> bytes:
    """The plaintext of `blob`, hash checked; from the replica when the primary copy is gone or damaged.

    `tenant_keys`, a dict the caller keeps for one request (a series retrieval), holds the unwrapped tenant keys
    so that each is read and unwrapped once per request rather than once per blob."""
    try:
        data_key = blob_data_key(blob=blob, tenant_keys=tenant_keys)
    except (KeyUnavailable, envelope.DecryptionError) as exc:
        logger.warning("blob %s: its key cannot be opened (%s)", blob.public_id, exc.__class__.__name__)
        raise BlobUnreadable(f"blob {blob.public_id} is unreadable (its key cannot be opened)") from exc
    failures = []
    for store in _stores_for(blob):
        try:
            return _decrypt_from(store, blob, data_key)
        except (OSError, envelope.DecryptionError) as exc:
            failures.append(f"{store}: {exc.__class__.__name__}")
            logger.warning("blob %s unreadable from %s (%s)", blob.public_id, store, exc.__class__.__name__)
    raise BlobUnreadable(f"blob {blob.public_id} is unreadable ({'; '.join(failures)})")


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
