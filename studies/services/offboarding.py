"""Tenant offboarding (issue 13): a full export, then crypto-shredding, then a certificate of destruction.

- One platform operator requests it with a reason; another approves it (the same person cannot do both). Only
  active staff accounts (the `/ops/` operators) may act. Each step is on the tenant's audit trail and the
  platform's.
- The approval, in order: older blobs adopt their study keys; the export is built (every DICOM instance
  decrypted, the audit trail as JSON with its chain hashes, canonical forms and signed digests, the training and
  device records, and a manifest with the SHA-256 of each file), encrypted under a one-off key wrapped by the
  master key (not by the tenant's keys, which are about to go) and written to the primary and the replica store;
  then every study key file of the tenant is deleted from both stores and every tenant key's material erased;
  the tenant is suspended; the certificate of destruction (what, when, who requested and approved, how, the
  hashes) is stored on the row with its own SHA-256.
- Afterwards no blob of the tenant opens, from the live database or from a backup taken before, except blobs of
  no study (exports, training evidence) read with a backup's tenant key: docs/RETENTION.md says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.core.files.storage import storages
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from audit.events import EventType
from audit.selectors import audit_trail_export
from audit.services import audit_event_record
from devices.selectors import device_records_export
from studies.models import Blob, Instance, StudyKey, TenantKey, TenantOffboarding
from studies.services.keys import study_keys_adopt
from studies.storage import envelope
from studies.storage.blobs import BlobUnreadable, blob_read
from studies.storage.keys import (
    PRIMARY,
    REPLICA,
    master_key_for_wrapping,
    master_keys_for_unwrapping,
    study_key_cache,
    study_key_files_delete,
)
from tenants.models import Tenant, User
from tenants.scoping import tenant_scope
from training.selectors import training_records_export

logger = logging.getLogger(__name__)

REASON_MAX = 500
STREAM_PIECE = 1 << 20  # ciphertext read a MiB at a time when the export is streamed
SEAL_PIECE = 1 << 18  # the zip read 256 KiB at a time when it is encrypted (the cipher gathers its 1 MiB chunks)
METHOD = (
    "Cryptographic erase (NIST SP 800-88 Rev. 1 Purge): every study key-encryption key file deleted from the "
    "primary and the replica blob store, every tenant key's wrapped material erased from the database"
)


def _operator_check(user: User) -> None:
    if not (user.is_active and user.is_staff):
        raise ValidationError("Only platform operators may offboard a tenant.")


def tenant_offboarding_request(*, operator: User, tenant: Tenant, reason: str) -> TenantOffboarding:
    """Open an offboarding of `tenant` (one open request per tenant). Platform operators only; audited."""
    _operator_check(operator)
    reason = reason.strip()
    if not reason or len(reason) > REASON_MAX:
        raise ValidationError(f"Give a reason (at most {REASON_MAX} characters).")
    with tenant_scope(tenant), transaction.atomic():
        if TenantOffboarding.objects.filter(status=TenantOffboarding.Status.REQUESTED).exists():
            raise ValidationError("An offboarding of this tenant is already waiting for approval.")
        offboarding = TenantOffboarding(tenant=tenant, reason=reason, requested_by=operator)
        offboarding.full_clean()
        offboarding.save()
        audit_event_record(
            event=EventType.TENANT_OFFBOARDING_REQUESTED,
            actor=operator,
            target=offboarding,
            extra={"reason": reason},
        )
    return offboarding


def tenant_offboarding_reject(*, operator: User, offboarding: TenantOffboarding, reason: str) -> TenantOffboarding:
    _operator_check(operator)
    with tenant_scope(offboarding.tenant), transaction.atomic():
        offboarding = TenantOffboarding.objects.select_for_update().get(pk=offboarding.pk)
        if offboarding.status != TenantOffboarding.Status.REQUESTED:
            raise ValidationError("This offboarding is no longer waiting for approval.")
        offboarding.status, offboarding.approved_by, offboarding.decided_at = (
            TenantOffboarding.Status.REJECTED,
            operator,
            timezone.now(),
        )
        offboarding.save(update_fields=["status", "approved_by", "decided_at", "updated_at"])
        audit_event_record(
            event=EventType.TENANT_OFFBOARDING_REJECTED, actor=operator, target=offboarding, extra={"reason": reason}
        )
    return offboarding


def _json(data: Any) -> bytes:
    return json.dumps(data, cls=DjangoJSONEncoder, indent=1, sort_keys=True).encode()


def _export_build(tenant: Tenant, out: IO[bytes]) -> dict[str, Any]:
    """Write the export zip to `out` (a temporary file: a hospital's export is far larger than memory; one
    instance at a time is read) and return what it holds (counts and the SHA-256 of each file)."""
    manifest: dict[str, str] = {}
    instances = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:

        def put(name: str, data: bytes) -> None:
            archive.writestr(name, data)
            manifest[name] = hashlib.sha256(data).hexdigest()

        # Batches by primary key rather than a server-side cursor (`.iterator()`): a failure half-way must not
        # leave a named cursor behind in the connection's transaction.
        pks = list(Instance.objects.order_by("pk").values_list("pk", flat=True))
        batches = (pks[start : start + 500] for start in range(0, len(pks), 500))
        rows = (
            instance
            for batch in batches
            for instance in Instance.objects.filter(pk__in=batch).select_related("blob", "series__study").order_by("pk")
        )
        for instance in rows:
            try:
                data = blob_read(blob=instance.blob)
            except BlobUnreadable as exc:  # nothing is destroyed until every instance is in the export
                raise ValidationError(
                    f"Instance {instance.public_id} is unreadable from both stores: repair it before offboarding."
                ) from exc
            put(f"dicom/{instance.series.study.study_instance_uid}/{instance.sop_instance_uid}.dcm", data)
            instances += 1
        trail = audit_trail_export()
        put("audit/trail.json", _json(trail))
        put("training/records.json", _json(training_records_export()))
        put("devices/records.json", _json(device_records_export()))
        summary = {
            "tenant": tenant.slug,
            "instances": instances,
            "audit_events": len(trail["events"]),
            "audit_chain_head": {"sequence": trail["last_sequence"], "hash": trail["last_hash"]},
        }
        archive.writestr("manifest.json", _json({**summary, "files": manifest}))
    return {**summary, "files": len(manifest)}


def _export_seal(plain: IO[bytes], sealed: IO[bytes], *, key: bytes, tenant_id: int, export_id: str) -> tuple[str, int]:
    """Encrypt the zip in `plain` into `sealed`, a piece at a time; the SHA-256 and size of the plaintext."""
    digest, size = hashlib.sha256(), 0
    plain.seek(0)

    def pieces() -> Iterator[bytes]:
        nonlocal size
        for piece in iter(lambda: plain.read(SEAL_PIECE), b""):
            digest.update(piece)
            size += len(piece)
            yield piece

    for piece in envelope.encrypt_chunks(pieces(), data_key=key, tenant_id=tenant_id, blob_id=export_id):
        sealed.write(piece)
    return digest.hexdigest(), size


def tenant_offboarding_approve(*, operator: User, offboarding: TenantOffboarding) -> TenantOffboarding:
    """Approve (a second operator) and carry out the offboarding: export, shred, certify. Idempotent: an
    offboarding already done is returned as it is. Runs long for a large tenant (operators' tool, not a request
    path to keep short)."""
    _operator_check(operator)
    tenant = offboarding.tenant
    with tenant_scope(tenant):
        offboarding = TenantOffboarding.objects.get(pk=offboarding.pk)
        if offboarding.status == TenantOffboarding.Status.DONE:
            return offboarding
        if offboarding.status != TenantOffboarding.Status.REQUESTED:
            raise ValidationError("This offboarding is no longer waiting for approval.")
        if offboarding.requested_by_id == operator.pk:
            raise ValidationError("You requested this offboarding: a second operator must approve it.")
        study_keys_adopt()  # blobs stored before study keys: under their study's key, so the shred reaches them
        export_key = envelope.new_key()
        export_id = str(offboarding.public_id)
        name = f"offboarding/t{tenant.pk}/{uuid.uuid4().hex}.zip.enc"
        # Plaintext and ciphertext on disk, never whole in memory; the temporary files go when the block ends.
        with tempfile.TemporaryFile() as plain, tempfile.TemporaryFile() as sealed:
            summary = _export_build(tenant, plain)
            export_sha256, export_size = _export_seal(
                plain, sealed, key=export_key, tenant_id=tenant.pk, export_id=export_id
            )
            for store in (PRIMARY, REPLICA):
                sealed.seek(0)
                storages[store].save(name, File(sealed, name=name))
        with transaction.atomic():
            offboarding = TenantOffboarding.objects.select_for_update().get(pk=offboarding.pk)
            if offboarding.status != TenantOffboarding.Status.REQUESTED:
                raise ValidationError("This offboarding is no longer waiting for approval.")
            now = timezone.now()
            study_keys = list(StudyKey.objects.values_list("key_id", flat=True))
            for key_id in study_keys:
                study_key_files_delete(tenant_id=tenant.pk, key_id=key_id)
            tenant_keys = list(TenantKey.objects.filter(retired_at__isnull=True).values_list("version", flat=True))
            for row in TenantKey.objects.select_for_update().filter(retired_at__isnull=True):
                row.active, row.retired_at, row.wrapped = False, now, b""
                row.save(update_fields=["active", "retired_at", "wrapped", "updated_at"])
            tenant.status = Tenant.Status.SUSPENDED
            tenant.save(update_fields=["status", "updated_at"])
            certificate: dict[str, Any] = {
                "document": "Certificate of destruction",
                "tenant": {"slug": tenant.slug, "name": tenant.name, "id": tenant.pk},
                "offboarding": export_id,
                "reason": offboarding.reason,
                "requested_by": {
                    "username": offboarding.requested_by.username,
                    "at": offboarding.created_at.isoformat(),
                },
                "approved_by": {"username": operator.username, "at": now.isoformat()},
                "destroyed_at": now.isoformat(),
                "method": METHOD,
                "study_keys_destroyed": len(study_keys),
                "tenant_key_versions_destroyed": tenant_keys,
                "blobs_made_unreadable": Blob.objects.count(),
                "export": {"name": name, "sha256": export_sha256, "size": export_size, **summary},
            }
            offboarding.status, offboarding.approved_by, offboarding.decided_at = (
                TenantOffboarding.Status.DONE,
                operator,
                now,
            )
            offboarding.export_name, offboarding.export_size = name, export_size
            offboarding.export_sha256 = certificate["export"]["sha256"]
            offboarding.export_key = envelope.wrap_export_key(
                master_key=master_key_for_wrapping(), export_key=export_key, tenant_id=tenant.pk, export_id=export_id
            )
            offboarding.certificate = certificate
            offboarding.certificate_sha256 = hashlib.sha256(_json(certificate)).hexdigest()
            offboarding.save()
            audit_event_record(
                event=EventType.TENANT_SHREDDED,
                actor=operator,
                target=offboarding,
                extra={
                    "certificate_sha256": offboarding.certificate_sha256,
                    "export_sha256": offboarding.export_sha256,
                    "study_keys": len(study_keys),
                },
            )
        study_key_cache.clear()
    audit_event_record(  # the platform's chain too: the tenant's own trail is now in the export
        event=EventType.TENANT_SHREDDED,
        tenant=None,
        actor=operator,
        extra={"tenant": tenant.slug, "certificate_sha256": offboarding.certificate_sha256},
    )
    return offboarding


def _export_key(offboarding: TenantOffboarding) -> bytes:
    if offboarding.status != TenantOffboarding.Status.DONE:
        raise ValidationError("This offboarding has no export.")
    for master in master_keys_for_unwrapping():
        try:
            return envelope.unwrap_export_key(
                master_key=master,
                wrapped=bytes(offboarding.export_key),
                tenant_id=offboarding.tenant_id,
                export_id=str(offboarding.public_id),
            )
        except envelope.DecryptionError:
            continue
    raise ValidationError("No master key opens this export.")


def _export_read_record(operator: User, offboarding: TenantOffboarding, **extra: Any) -> None:
    with transaction.atomic():
        audit_event_record(event=EventType.TENANT_EXPORT_READ, actor=operator, target=offboarding, extra=extra)


def _export_plaintext(store: str, offboarding: TenantOffboarding, key: bytes) -> Iterator[bytes]:
    """The export's plaintext from one store, chunk by chunk (never whole in memory); DecryptionError or OSError
    when that copy is damaged or missing."""
    with storages[store].open(offboarding.export_name, "rb") as handle:
        pieces = iter(lambda: handle.read(STREAM_PIECE), b"")
        yield from envelope.decrypt_stream(
            pieces, data_key=key, tenant_id=offboarding.tenant_id, blob_id=str(offboarding.public_id)
        )


def _export_copy_good(store: str, offboarding: TenantOffboarding, key: bytes) -> bool:
    digest, size = hashlib.sha256(), 0
    try:
        for chunk in _export_plaintext(store, offboarding, key):
            digest.update(chunk)
            size += len(chunk)
    except (OSError, envelope.DecryptionError):
        logger.warning("offboarding export %s unreadable from %s", offboarding.public_id, store)
        return False
    return size == offboarding.export_size and digest.hexdigest() == offboarding.export_sha256


def tenant_offboarding_export_stream(*, operator: User, offboarding: TenantOffboarding) -> Iterator[bytes]:
    """The decrypted export zip as a stream of chunks, for the operators' download page. Platform operators only
    (else ValidationError). A copy (primary, else replica) is first decrypted whole and its SHA-256 and size
    checked against the row, without keeping it; then TENANT_EXPORT_READ is recorded (committed) and only then is
    the iterator returned: no byte leaves before the read is on the trail, and none from a damaged copy. Should
    the copy change between the check and the stream, the stream stops with DecryptionError (a cut download)."""
    _operator_check(operator)
    with tenant_scope(offboarding.tenant):
        key = _export_key(offboarding)
        store = next((s for s in (PRIMARY, REPLICA) if _export_copy_good(s, offboarding, key)), None)
        if store is None:
            raise ValidationError("The export is unreadable from both stores.")
        _export_read_record(operator, offboarding, streamed=True, store=store, bytes=offboarding.export_size)
    return _export_plaintext(store, offboarding, key)
