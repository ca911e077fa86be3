"""Key rotation and the adoption of study keys (issue 13). Run by `manage.py rotate_keys`; never by a request.

- `tenant_key_rotate`: a new tenant key version; every key wrapped by an older version (study key files and the
  tenant-wrapped Blob rows) is rewrapped under it, without rewriting any image. Progress is recorded per object
  (a Blob row's `key_version`, a StudyKey row's `key_version` and its file name), each object in its own
  transaction, so an interrupted run loses nothing and a second run finishes it. A version is retired (inactive,
  its material erased) only once nothing references it.
- `master_key_rotate`: every live TenantKey rewrapped by MASTER_KEY_NEW, each row in its own transaction; a row
  that already opens with the new key is done. Then the operator makes the new key MASTER_KEY.
- `study_keys_adopt`: instance blobs and thumbnails stored before study keys existed are rewrapped under their
  study's key, so that retention deletion shreds them too; exports, certificates and quarantined uploads stored
  before keys of their own get one (studies.storage.blobs.own_key_uid), so that their deletion shreds them.

Each is audited on the tenant's trail (TENANT_KEY_ROTATION_STARTED, TENANT_KEY_ROTATED, MASTER_KEY_ROTATED,
STUDY_KEYS_ADOPTED). Callers open the tenant scope (the command does). No key is ever logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record
from studies.models import Blob, Instance, Series, StudyKey, TenantKey
from studies.storage import envelope
from studies.storage.blobs import own_key_uid
from studies.storage.keys import (
    PRIMARY,
    REPLICA,
    KeyUnavailable,
    master_key_for_wrapping,
    master_keys_for_unwrapping,
    study_key_ensure,
    study_key_file_name,
    study_key_read_file,
    study_key_write,
    tenant_key_unwrap,
)
from tenants.models import Tenant
from tenants.scoping import current_tenant

PRINCIPAL = "manage.py rotate_keys"
# A backup under way takes less than this (its manifest, which backups_prune reads, is written at its end).
BACKUP_UNDER_WAY = timedelta(days=1)
# How many times the sweep is repeated when writers that began before the new version keep adding old-wrapped keys.
SWEEPS = 3


@dataclass
class RotationReport:
    version: int
    resumed: bool
    blobs: int = 0
    study_keys: int = 0
    retired: list[int] = field(default_factory=list)
    still_referenced: list[int] = field(default_factory=list)


def _progress(step: Callable[[], None] | None) -> None:
    if step is not None:
        step()


def _rotation_target(tenant: Tenant) -> tuple[TenantKey, bool]:
    """The version to rotate to: the highest active one when an earlier run was interrupted (more than one
    version active), else a new one. The tenant row lock keeps two runs from both adding a version."""
    with transaction.atomic():
        Tenant.objects.select_for_update().get(pk=tenant.pk)
        active = list(TenantKey.objects.filter(active=True).order_by("-version"))
        if len(active) > 1:
            return active[0], True
        top = TenantKey.objects.aggregate(top=Max("version"))["top"] or 0
        row = TenantKey.objects.create(
            tenant=tenant,
            version=top + 1,
            wrapped=envelope.wrap_tenant_key(
                master_key=master_key_for_wrapping(),
                tenant_key=envelope.new_key(),
                tenant_id=tenant.pk,
                version=top + 1,
            ),
            active=True,
        )
        audit_event_record(
            event=EventType.TENANT_KEY_ROTATION_STARTED,
            target=row,
            system_principal=PRINCIPAL,
            extra={"version": row.version, "previous": [key.version for key in active]},
        )
        return row, False


def _rewrap_blob(pk: int, target: int, keks: dict[int, bytes]) -> bool:
    with transaction.atomic():
        blob = Blob.objects.select_for_update().get(pk=pk)
        if blob.study_key_id is not None or blob.key_version == target:
            return False
        data_key = envelope.unwrap_data_key(
            tenant_key=keks[blob.key_version],
            wrapped=bytes(blob.wrapped_key),
            tenant_id=blob.tenant_id,
            blob_id=str(blob.public_id),
        )
        blob.wrapped_key = envelope.wrap_data_key(
            tenant_key=keks[target], data_key=data_key, tenant_id=blob.tenant_id, blob_id=str(blob.public_id)
        )
        blob.key_version = target
        blob.save(update_fields=["wrapped_key", "key_version", "updated_at"])
    return True


def _rewrap_study_key(pk: int, target: int, keks: dict[int, bytes]) -> bool:
    """Write the key's file for the new version (both stores), then move the row to it. Killed before the commit:
    the row still names the old file, which is intact. The old file stays: a database backup taken before names
    it, and restored, must still open the study; it goes with the old version's other files once no backup older
    than the version's retirement is kept (`rotated_key_files_prune`), or with the study (retention deletion
    removes every version)."""
    with transaction.atomic():
        row = StudyKey.objects.select_for_update().get(pk=pk)
        old = row.key_version
        if old == target:
            return False
        key = study_key_read_file(row=row, version=old, kek=keks[old])
        study_key_write(row=row, study_key=key, version=target, kek=keks[target])
        row.key_version = target
        row.save(update_fields=["key_version", "updated_at"])
    return True


def _references(version: int) -> int:
    return (
        Blob.objects.filter(study_key__isnull=True, key_version=version).count()
        + StudyKey.objects.filter(key_version=version).count()
    )


def tenant_key_rotate(*, step: Callable[[], None] | None = None) -> RotationReport:
    """Rotate the current tenant's key (see the module docstring). Resumable; idempotent once finished.
    `step` is called after each object rewrapped (the command's progress)."""
    tenant = current_tenant()
    target_row, resumed = _rotation_target(tenant)
    target = target_row.version
    keks = {row.version: tenant_key_unwrap(row) for row in TenantKey.objects.filter(retired_at__isnull=True)}
    report = RotationReport(version=target, resumed=resumed)
    for _ in range(SWEEPS):
        blob_ids = list(
            Blob.objects.filter(study_key__isnull=True, key_version__lt=target)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        key_ids = list(StudyKey.objects.filter(key_version__lt=target).order_by("pk").values_list("pk", flat=True))
        if not blob_ids and not key_ids:
            break
        for pk in blob_ids:
            if _rewrap_blob(pk, target, keks):
                report.blobs += 1
                _progress(step)
        for pk in key_ids:
            if _rewrap_study_key(pk, target, keks):
                report.study_keys += 1
                _progress(step)
    with transaction.atomic():
        for old in TenantKey.objects.select_for_update().filter(active=True, version__lt=target).order_by("version"):
            if _references(old.version):
                report.still_referenced.append(old.version)
                continue
            old.active, old.retired_at, old.wrapped = False, timezone.now(), b""
            old.save(update_fields=["active", "retired_at", "wrapped", "updated_at"])
            report.retired.append(old.version)
        audit_event_record(
            event=EventType.TENANT_KEY_ROTATED,
            target=target_row,
            system_principal=PRINCIPAL,
            extra={
                "version": target,
                "resumed": resumed,
                "blobs_rewrapped": report.blobs,
                "study_keys_rewrapped": report.study_keys,
                "retired": report.retired,
                "still_referenced": report.still_referenced,
            },
        )
    return report


def rotated_key_files_prune(*, oldest_backup: datetime | None) -> list[int]:
    """Remove the study key files of the current tenant's retired key versions that no kept database backup can
    need: a version retired before `oldest_backup` was taken (the oldest backup kept; None: there is none) is named
    by no row of any backup. A version retired less than a day ago is kept whatever the backups (a backup under way
    has no manifest yet, and takes less than a day). Each version is done once (`key_files_removed_at`), files of
    every study key of the tenant, from both stores, after the commit. Audited ROTATED_KEY_FILES_REMOVED. Returns
    the versions done."""
    done: list[int] = []
    cutoff = timezone.now() - BACKUP_UNDER_WAY
    if oldest_backup is not None:
        cutoff = min(cutoff, oldest_backup)
    candidates = TenantKey.objects.filter(
        retired_at__isnull=False, retired_at__lt=cutoff, key_files_removed_at__isnull=True
    )
    key_ids = list(StudyKey.objects.values_list("key_id", flat=True))
    tenant = current_tenant()
    with transaction.atomic():
        for row in candidates.select_for_update().order_by("version"):
            names = [study_key_file_name(tenant_id=tenant.pk, key_id=k, version=row.version) for k in key_ids]

            def remove(names: list[str] = names) -> None:
                for store in (PRIMARY, REPLICA):
                    for name in names:
                        storages[store].delete(name)

            transaction.on_commit(remove)
            row.key_files_removed_at = timezone.now()
            row.save(update_fields=["key_files_removed_at", "updated_at"])
            done.append(row.version)
        if done:
            audit_event_record(
                event=EventType.ROTATED_KEY_FILES_REMOVED,
                tenant=tenant,
                system_principal=PRINCIPAL,
                extra={
                    "versions": done,
                    "study_keys": len(key_ids),
                    "oldest_backup": oldest_backup.isoformat() if oldest_backup else None,
                },
            )
    return done


def master_key_rotate(*, step: Callable[[], None] | None = None) -> int:
    """Rewrap the current tenant's live keys under MASTER_KEY_NEW (which must be set). Resumable: a row that
    already opens with the new key is left alone. Returns how many rows were rewrapped."""
    new_master = master_key_for_wrapping()
    if new_master == master_keys_for_unwrapping()[-1]:
        raise KeyUnavailable("MASTER_KEY_NEW is not set, or is MASTER_KEY itself")
    rewrapped = 0
    for pk in TenantKey.objects.filter(retired_at__isnull=True).order_by("version").values_list("pk", flat=True):
        with transaction.atomic():
            row = TenantKey.objects.select_for_update().get(pk=pk)
            try:
                envelope.unwrap_tenant_key(
                    master_key=new_master, wrapped=bytes(row.wrapped), tenant_id=row.tenant_id, version=row.version
                )
                continue  # done by an earlier run
            except envelope.DecryptionError:
                pass
            plain = tenant_key_unwrap(row)
            row.wrapped = envelope.wrap_tenant_key(
                master_key=new_master, tenant_key=plain, tenant_id=row.tenant_id, version=row.version
            )
            row.save(update_fields=["wrapped", "updated_at"])
            rewrapped += 1
        _progress(step)
    audit_event_record(
        event=EventType.MASTER_KEY_ROTATED,
        tenant=current_tenant(),
        system_principal=PRINCIPAL,
        extra={"tenant_keys_rewrapped": rewrapped},
    )
    return rewrapped


def _adopt(blob_pk: int, study_instance_uid: str) -> bool:
    tenant = current_tenant()
    with transaction.atomic():
        blob = Blob.objects.select_for_update().get(pk=blob_pk)
        if blob.study_key_id is not None:
            return False
        kek = tenant_key_unwrap(TenantKey.objects.get(version=blob.key_version))
        data_key = envelope.unwrap_data_key(
            tenant_key=kek, wrapped=bytes(blob.wrapped_key), tenant_id=blob.tenant_id, blob_id=str(blob.public_id)
        )
        row, study_key = study_key_ensure(tenant=tenant, study_instance_uid=study_instance_uid)
        blob.wrapped_key = envelope.wrap_data_key_by_study(
            study_key=study_key, data_key=data_key, tenant_id=blob.tenant_id, blob_id=str(blob.public_id)
        )
        blob.study_key, blob.key_version = row, 0
        blob.save(update_fields=["wrapped_key", "study_key", "key_version", "updated_at"])
    return True


def study_keys_adopt(*, step: Callable[[], None] | None = None) -> int:
    """Rewrap the current tenant's instance blobs and thumbnails that are still tenant-wrapped under their
    study's key, and the other tenant-wrapped blobs (exports, certificates, quarantine) under a key of their own.
    Resumable and idempotent (a blob with a study key is done). Returns how many were rewrapped."""
    todo = (
        [
            (pk, uid)
            for pk, uid in Instance.objects.filter(blob__study_key__isnull=True)
            .order_by("pk")
            .values_list("blob_id", "series__study__study_instance_uid")
        ]
        + [
            (pk, uid)
            for pk, uid in Series.objects.filter(thumbnail__isnull=False, thumbnail__study_key__isnull=True)
            .order_by("pk")
            .values_list("thumbnail_id", "study__study_instance_uid")
        ]
        + [
            (pk, own_key_uid(public_id))
            for pk, public_id in Blob.objects.filter(study_key__isnull=True)
            .exclude(kind__in=[Blob.Kind.INSTANCE, Blob.Kind.THUMBNAIL])
            .order_by("pk")
            .values_list("pk", "public_id")
        ]
    )
    adopted = 0
    for pk, uid in todo:
        if _adopt(pk, uid):
            adopted += 1
            _progress(step)
    if adopted:
        audit_event_record(
            event=EventType.STUDY_KEYS_ADOPTED,
            tenant=current_tenant(),
            system_principal=PRINCIPAL,
            extra={"blobs_rewrapped": adopted},
        )
    return adopted
