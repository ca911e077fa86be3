"""Exports: a study or a search result as a zip, de-identified per DICOM PS3.15 Annex E (studies.dicom.deidentify)
or, with `tenants.export_identified`, as stored, which is a disclosure (HIPAA 164.528 accounting of disclosures).

Flow: `export_request` (the person's act: checks, Export row, audit, job queued on commit) -> `export_run` (the
Celery job: claims the row, writes progress, stores the zip as an encrypted blob) -> `export_download_once` (the
owner's one download: decrypts, marks downloaded, shreds the blob; later tries get `ExportGone`, a 410).

Each run de-identifies with a fresh random key that is never stored, so the export cannot be re-identified
from anything Enclave keeps (no honest-broker map yet).
"""

from __future__ import annotations

import io
import logging
import secrets
import zipfile
from collections.abc import Iterable
from typing import Any

import pyzipper
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.services import audit_event_record
from studies.dicom.deidentify import SUPPORTED_OPTIONS, Deidentifier, NotDeidentifiable
from studies.models import Blob, Export, Instance, Study
from studies.services.reads import read_participants
from studies.storage.blobs import blob_delete, blob_read, blob_write
from tenants import access
from tenants.jobs import task_queue_on_commit

logger = logging.getLogger(__name__)

VIEW_STUDY = "studies.view_study"
EXPORT_IDENTIFIED = "tenants.export_identified"
MAX_STUDIES = 200
# Progress is written every this many instances (and at the end): one UPDATE per instance is wasteful.
PROGRESS_EVERY = 5


class ExportGone(Exception):
    """The export was already downloaded (or its zip is gone): HTTP 410."""


class ExportNotReady(Exception):
    """The export has not finished (or it failed): nothing to download yet."""


class ExportFailed(Exception):
    """A reason to stop an export that is safe to show (no patient data)."""


def _event_for(export: Export) -> EventType:
    return EventType.STUDY_EXPORTED if export.kind == Export.Kind.DEIDENTIFIED else EventType.DISCLOSURE_EXPORTED


def _participants(studies: Iterable[Study]) -> list[dict[str, Any]]:
    return read_participants(studies=studies)


def _extra(export: Export, phase: str) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "export": str(export.public_id),
        "phase": phase,
        "Anonymized": export.kind == Export.Kind.DEIDENTIFIED,
        "options": list(export.options),
        "instances": export.total,
        "Encrypted": export.encrypted,
    }
    if export.kind == Export.Kind.IDENTIFIED:
        extra |= {"recipient": export.recipient, "purpose": export.purpose}
    return extra


@transaction.atomic
def export_request(
    *,
    actor: Any,
    studies: Iterable[Study],
    kind: str = Export.Kind.DEIDENTIFIED,
    options: Iterable[str] = (),
    purpose: str = "",
    recipient: str = "",
    encrypted: bool = False,
) -> Export:
    """Ask for an export of `studies` (inside the tenant scope) and queue its job.

    `actor` must hold a role that sees images and see every study (`studies.view_study`; else NotVisible, a 404:
    `export_permitted` asks the same again at download time). An identified export
    also needs `tenants.export_identified` (else Forbidden, a 403), a purpose and a recipient, and is recorded as
    DISCLOSURE_EXPORTED; a de-identified one as STUDY_EXPORTED with Anonymized=true. Options are CID 7050 codes
    (113107, 113109) and apply to de-identified exports only.

    `encrypted`: the bundle is an AES-256 ZIP (WinZip AE-2) under a fresh random password, returned once as
    `export.password` (never stored in clear: kept as an encrypted blob until the job has used it, then shredded;
    show it to the requester and nowhere else). Recorded with Encrypted=true.
    """
    studies = list(studies)
    if not studies:
        raise ValidationError({"studies": "Choose at least one study."})
    if len(studies) > MAX_STUDIES:
        raise ValidationError({"studies": f"At most {MAX_STUDIES} studies per export."})
    if not access.may_see_images(actor, studies[0].tenant):
        raise access.NotVisible()
    for study in studies:
        if not access.has_perm(actor, VIEW_STUDY, study):
            raise access.NotVisible()
    if kind not in Export.Kind.values:
        raise ValidationError({"kind": "Unknown kind of export."})
    options = sorted(set(options))
    if kind == Export.Kind.IDENTIFIED:
        access.require(actor, EXPORT_IDENTIFIED, studies[0].tenant)
        if not purpose.strip() or not recipient.strip():
            raise ValidationError({"purpose": "An identified export needs a purpose and a recipient."})
        if studies[0].tenant.exports_must_be_encrypted and not encrypted:
            raise ValidationError(
                {"encrypted": "This organisation requires identified exports to be password-encrypted: choose it."}
            )
        options = []
    elif set(options) - SUPPORTED_OPTIONS:
        raise ValidationError({"options": "Unknown de-identification option."})
    export = Export(
        tenant=studies[0].tenant,
        owner=actor,
        kind=kind,
        options=options,
        purpose=purpose.strip(),
        recipient=recipient.strip(),
        total=Instance.objects.filter(series__study__in=studies).count(),
        encrypted=encrypted,
    )
    password = ""
    if encrypted:
        password = bundle_password_make()
        export.password_blob = blob_write(kind=Blob.Kind.EXPORT, data=password.encode(), replicate=False)
    export.full_clean(exclude=["studies"])
    export.save()
    export.password = password  # type: ignore[attr-defined]  # shown once by the caller, never stored
    export.studies.set(studies)
    audit_event_record(
        event=_event_for(export),
        actor=actor,
        target=export,
        participants=_participants(studies),
        extra=_extra(export, "requested"),
    )
    task_queue_on_commit("studies.tasks.export_run", tenant_id=export.tenant_id, export_id=export.pk)
    return export


PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"  # noqa: S105  # pragma: allowlist secret (an alphabet, no 0/O, 1/l/I)
PASSWORD_LENGTH = 24  # 24 of 56 symbols: about 139 bits


def bundle_password_make() -> str:
    """A random password for one bundle, in groups of six for reading aloud or typing."""
    raw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))
    return "-".join(raw[i : i + 6] for i in range(0, PASSWORD_LENGTH, 6))


def _archive(buffer: io.BytesIO, password: str) -> zipfile.ZipFile:
    """The bundle: a plain deflated zip, or with a password an AES-256 encrypted one (pyzipper, WinZip AE-2:
    7-Zip, WinZip and macOS's Archive Utility open it)."""
    if not password:
        return zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED)
    archive = pyzipper.AESZipFile(buffer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES)
    archive.setpassword(password.encode())
    archive.setencryption(pyzipper.WZ_AES, nbits=256)
    return archive


def _claim(export_id: int) -> bool:
    claimed = Export.objects.filter(pk=export_id, state=Export.State.QUEUED).update(
        state=Export.State.RUNNING, started_at=timezone.now(), updated_at=timezone.now()
    )
    return claimed == 1


def _instances(export: Export) -> list[Instance]:
    return list(
        Instance.objects.filter(series__study__in=export.studies.all())
        .select_related("series__study", "blob")
        .order_by("series__study_id", "series__series_number", "series_id", "instance_number", "created_at")
    )


class _Names:
    """Zip member names that carry no UID or patient data: study-001/series-002/00003.dcm."""

    def __init__(self) -> None:
        self.studies: dict[int, dict[int, int]] = {}
        self.counts: dict[int, int] = {}

    def __call__(self, instance: Instance) -> str:
        series_of_study = self.studies.setdefault(instance.series.study_id, {})
        study = list(self.studies).index(instance.series.study_id) + 1
        series = series_of_study.setdefault(instance.series_id, len(series_of_study) + 1)
        number = self.counts[instance.series_id] = self.counts.get(instance.series_id, 0) + 1
        return f"study-{study:03d}/series-{series:03d}/{number:05d}.dcm"


def export_run(*, export_id: int) -> Export | None:
    """The job: build the zip, store it encrypted, mark the export done (or failed, with a reason that names no
    patient data). Idempotent: only a queued export is claimed, so a retried or duplicated task does nothing."""
    if not _claim(export_id):
        return None
    export = Export.objects.get(pk=export_id)
    deidentifier = (
        Deidentifier(key=secrets.token_bytes(32), options=frozenset(export.options))
        if export.kind == Export.Kind.DEIDENTIFIED
        else None
    )
    buffer = io.BytesIO()
    done = 0
    password = blob_read(blob=export.password_blob).decode() if export.password_blob is not None else ""
    try:
        if export.encrypted and not password:
            raise ExportFailed("the bundle's password is gone: ask for the export again")
        instances = _instances(export)
        name = _Names()
        with _archive(buffer, password) as archive:
            for instance in instances:
                data = blob_read(blob=instance.blob)
                if deidentifier is not None:
                    try:
                        data = deidentifier.file(data).data
                    except NotDeidentifiable as exc:
                        raise ExportFailed(f"instance {instance.public_id}: {exc}") from exc
                archive.writestr(name(instance), data)
                done += 1
                if done % PROGRESS_EVERY == 0:
                    Export.objects.filter(pk=export.pk).update(done=done, updated_at=timezone.now())
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ExportFailed) else f"{exc.__class__.__name__} while exporting"
        logger.warning("export %s failed: %s", export.public_id, reason)
        # Saved through the model (not QuerySet.update) so that django-auditlog records the failure.
        export.refresh_from_db()
        export.state, export.error, export.done, export.finished_at = (
            Export.State.FAILED,
            reason[:500],
            done,
            timezone.now(),
        )
        password_blob, export.password_blob = export.password_blob, None
        export.save(update_fields=["state", "error", "done", "finished_at", "password_blob", "updated_at"])
        if password_blob is not None:
            blob_delete(blob=password_blob)
        return export
    with transaction.atomic():
        # Locked: a study of the export deleted by retention meanwhile (`exports_destroy_with_study`) failed the
        # export, and its zip must then never be stored.
        export = Export.objects.select_for_update().get(pk=export.pk)
        if export.state != Export.State.RUNNING:
            return export
        blob = blob_write(kind=Blob.Kind.EXPORT, data=buffer.getvalue())
        export.blob = blob
        export.done = done
        export.total = len(instances)
        export.state = Export.State.DONE
        export.finished_at = timezone.now()
        password_blob, export.password_blob = export.password_blob, None
        export.save(update_fields=["blob", "done", "total", "state", "finished_at", "password_blob", "updated_at"])
        if password_blob is not None:
            blob_delete(blob=password_blob)  # the password is in the bundle's keys now, and nowhere else
    return export


DESTROYED_WITH_STUDY = "A study of this export was deleted under the retention policy; the export went with it."


def exports_destroy_with_study(*, study: Study) -> list[str]:
    """Inside the deletion of `study` (studies.services.retention): every export holding it that is not yet
    downloaded is failed and its zip destroyed (the row, its own key and, after the commit, its files), so that
    neither a saved copy of the zip nor a database backup taken before can give back the deleted study. An export
    still running is failed too, and stores nothing (`export_run` checks its row under lock). Returns the public
    ids of the exports destroyed."""
    destroyed = []
    for export in (
        Export.objects.select_for_update(of=("self",))
        .filter(studies=study)
        .filter(Q(blob__isnull=False) | Q(state__in=[Export.State.QUEUED, Export.State.RUNNING]))
        .select_related("blob")
        .order_by("pk")
    ):
        blob = export.blob
        export.blob, export.state, export.error = None, Export.State.FAILED, DESTROYED_WITH_STUDY
        export.finished_at = export.finished_at or timezone.now()
        export.save(update_fields=["blob", "state", "error", "finished_at", "updated_at"])
        if blob is not None:
            blob_delete(blob=blob)
        destroyed.append(str(export.public_id))
    return destroyed


def export_owner_check(*, actor: Any, export: Export) -> None:
    """Only the person who asked for an export sees it; anyone else gets NotVisible (a 404)."""
    if getattr(actor, "pk", None) is None or export.owner_id != actor.pk:
        raise access.NotVisible()


def export_shown_check(*, actor: Any, export: Export, phase: str = "progress refused") -> None:
    """For the export's progress page and its status poll: only its owner, and only while they may still have
    it (`export_permitted`, asked again at every request, as the download does). Otherwise NotVisible (a 404,
    the same as a missing export); a refused owner is recorded as a failed access (outcome 4, `phase`)."""
    export_owner_check(actor=actor, export=export)
    if not export_permitted(actor=actor, export=export):
        _download_refused_record(actor=actor, export=export, phase=phase)
        raise access.NotVisible()


def export_permitted(*, actor: Any, export: Export) -> bool:
    """True when `actor` may still have `export` now, through tenants.access: a role that sees images
    (`access.may_see_images`), every study of the export visible (`studies.view_study`), and for an identified
    export `tenants.export_identified`. The download asks again, so an export made under a share that was revoked
    since, or by someone whose role changed, is not handed out."""
    tenant = export.tenant
    if not access.may_see_images(actor, tenant):
        return False
    if export.kind == Export.Kind.IDENTIFIED and not access.has_perm(actor, EXPORT_IDENTIFIED, tenant):
        return False
    wanted = set(export.studies.values_list("pk", flat=True))
    seen = set(access.visible(actor, VIEW_STUDY, Study.objects.filter(pk__in=wanted)).values_list("pk", flat=True))
    return bool(wanted) and seen == wanted


def export_download_once(*, actor: Any, export: Export) -> bytes:
    """The zip of a finished export, decrypted, for its owner, once: the row is locked, marked downloaded and its
    blob shredded in one transaction, and the download is audited (STUDY_EXPORTED or DISCLOSURE_EXPORTED, phase
    "downloaded"). Not the owner: NotVisible. No longer permitted (`export_permitted`, asked at download time):
    NotVisible, recorded as a failed access (outcome 4, phase "download refused") and the zip kept unread.
    Already downloaded: ExportGone. Not finished: ExportNotReady."""
    export_owner_check(actor=actor, export=export)
    data = _download_if_permitted(actor=actor, export=export)
    if data is None:
        _download_refused_record(actor=actor, export=export)
        raise access.NotVisible()
    return data


@transaction.atomic
def _download_if_permitted(*, actor: Any, export: Export) -> bytes | None:
    export = Export.objects.select_for_update().get(pk=export.pk)
    if not export_permitted(actor=actor, export=export):
        return None
    if export.downloaded_at is not None:
        raise ExportGone()
    if export.state != Export.State.DONE or export.blob is None:
        raise ExportNotReady()
    blob = export.blob
    data = blob_read(blob=blob)
    export.downloaded_at = timezone.now()
    export.blob = None
    export.save(update_fields=["downloaded_at", "blob", "updated_at"])
    blob_delete(blob=blob)
    audit_event_record(
        event=_event_for(export),
        actor=actor,
        target=export,
        participants=_participants(export.studies.select_related("patient")),
        extra=_extra(export, "downloaded") | {"bytes": len(data)},
    )
    return data


@transaction.atomic
def _download_refused_record(*, actor: Any, export: Export, phase: str = "download refused") -> None:
    """The refused download (or progress page) on the trail, committed on its own: the caller answers 404 after
    it."""
    audit_event_record(
        event=_event_for(export),
        actor=actor,
        target=export,
        participants=_participants(export.studies.select_related("patient")),
        outcome=Outcome.MINOR_FAILURE,
        outcome_description="the access this export needs is gone",
        extra=_extra(export, phase),
    )
