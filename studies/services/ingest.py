"""The one ingestion pipeline. Three doors (C-STORE, STOW-RS, browser upload) call `ingest_receive`; the Celery
task calls `ingest_process`; the sweeper calls `ingest_requeue_stale`.

Receive: the bytes go to the quarantine store (encrypted, never served) and an IngestItem is created, in one
transaction; the task is queued when it commits. Process: claim the item (compare-and-set), then limits, malware
scan, preamble, parse and validate, store encrypted in the archive and its replica, index, audit, mark stored.
Any failure marks the item rejected with a reason a person can read and keeps the quarantined bytes; an error
nobody foresaw is a rejection too (failure class `internal`), so no item is ever left waiting and every sender
hears a verdict.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.services import audit_event_record, participant, security_alert_raise
from studies import scanning
from studies.dicom import parse as dicom_parse
from studies.dicom import preamble as dicom_preamble
from studies.models import Blob, IngestItem, Instance, Patient, Series, Study, person_name_key
from studies.storage.blobs import BlobUnreadable, blob_delete, blob_read, blob_write
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


@transaction.atomic
def ingest_receive(
    *,
    source: str,
    batch: uuid.UUID,
    data: bytes,
    filename: str = "",
    actor: Any = None,
    device: Any = None,
    source_address: str | None = None,
) -> IngestItem:
    """Quarantine `data` and record it as received, in the current tenant. The caller has checked that the actor
    or device may send. Processing is queued when the transaction commits. Never raises for bad content: that is
    the task's verdict, recorded on the item."""
    tenant = current_tenant()
    if len(data) > settings.INGEST_MAX_BYTES:
        raise Rejected(
            f"The object is larger than the limit of {settings.INGEST_MAX_BYTES} bytes.",
            failure=IngestItem.Failure.TOO_LARGE,
        )
    ingest_quota_take(tenant=tenant, size=len(data))
    quarantine = blob_write(kind=Blob.Kind.QUARANTINE, data=data, replicate=False)
    item = IngestItem(
        tenant=tenant,
        source=source,
        batch=batch,
        filename=filename[:255],
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        quarantine=quarantine,
        actor=actor if getattr(actor, "pk", None) else None,
        device=device,
        source_address=source_address,
    )
    # Field rules only: the foreign keys were made or checked just above, and the public id is a fresh UUID, so
    # full_clean's look-ups of them (three SELECTs per received object) would prove nothing.
    item.clean_fields(exclude=["tenant", "quarantine", "actor", "device", "instance"])
    item.save()
    task_queue_on_commit("studies.tasks.ingest_process", tenant_id=tenant.pk, item_id=item.pk)
    return item


# Process
# ------------------------------------------------------------------------------


def _claim(item_id: int) -> bool:
    """Take the item for processing if nobody holds it: `received`, or `processing` claimed too long ago (its
    worker died). Exactly one caller wins."""
    stale = timezone.now() - timedelta(seconds=settings.INGEST_STALE_SECONDS)
    claimable = Q(state=IngestItem.State.RECEIVED) | Q(state=IngestItem.State.PROCESSING, claimed_at__lt=stale)
    won = IngestItem.objects.filter(claimable, pk=item_id).update(
        state=IngestItem.State.PROCESSING, claimed_at=timezone.now(), attempts=F("attempts") + 1
    )
    return won == 1


@dataclass(frozen=True)
class Verdict:
    data: bytes
    parsed: dicom_parse.ParsedInstance
    dataset: Any
    preamble_zeroed: bool


def _check(data: bytes) -> Verdict:
    """Every check an object passes before it may enter the archive, cheapest first."""
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
        parsed, dataset = dicom_parse.parse(data, limits=ingest_limits())
    except dicom_parse.InvalidDicom as exc:
        raise Rejected(exc.reason, failure=exc.kind) from exc
    zeroed = verdict.kind == "nonzero"
    if zeroed:
        data = dicom_preamble.zero_preamble(data)
    return Verdict(data=data, parsed=parsed, dataset=dataset, preamble_zeroed=zeroed)


def _get_or_create(model: Any, *, lookup: dict[str, Any], defaults: dict[str, Any]) -> Any:
    """get_or_create that survives a concurrent insert of the same unique key by another worker."""
    try:
        with transaction.atomic():
            return model.objects.get_or_create(**lookup, defaults=defaults)[0]
    except IntegrityError:
        return model.objects.get(**lookup)


def _index(
    *, tenant: Tenant, parsed: dicom_parse.ParsedInstance, blob: Blob, size: int, sha256: str
) -> tuple[Instance, bool]:
    """Insert the instance row, finding or creating its patient, study and series; True when the series is new.
    The series is looked up first: for every instance after a series' first, that one statement is the whole
    look-up."""
    series = (
        Series.objects.select_related("study__patient")
        .filter(tenant=tenant, series_instance_uid=parsed.series_instance_uid)
        .first()
    )
    created = series is None
    if series is None:
        patient = _get_or_create(
            Patient,
            lookup={"tenant": tenant, "patient_id": parsed.patient_id, "issuer": ""},
            defaults={"name": parsed.patient_name, "birth_date": parsed.patient_birth_date, "sex": parsed.patient_sex},
        )
        study = _get_or_create(
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
        series = _get_or_create(
            Series,
            lookup={"tenant": tenant, "series_instance_uid": parsed.series_instance_uid},
            defaults={
                "study": study,
                "modality": parsed.modality,
                "description": parsed.series_description,
                "series_number": parsed.series_number,
            },
        )
    instance = Instance(
        tenant=tenant,
        series=series,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        instance_number=parsed.instance_number,
        rows=parsed.rows or None,
        columns=parsed.columns or None,
        frames=parsed.frames or 1,
        size=size,
        sha256=sha256,
        content_sha256=parsed.content_sha256,
        blob=blob,
    )
    instance.save()
    _count_added(study_id=series.study_id, series_id=series.pk, new_series=created)
    return instance, created


def _count_added(*, study_id: int, series_id: int, new_series: bool) -> None:
    """Add one instance to the series' and the study's counts, in the transaction that inserts it.

    Each count is an increment in one UPDATE (`F() + 1`): the row lock that statement takes makes concurrent
    increments add up, so no recount and no SELECT ... FOR UPDATE is needed per instance. Only a new series
    changes the study's series count and modalities, which are then computed from the rows under the study's row
    lock (taken first, so that the statements after it see every series committed before it).

    These are queryset updates, so django-auditlog records no change for them: the counts are derived from the
    Instance rows, each of which is in django-auditlog and in the INSTANCES_STORED event of its storing."""
    now = timezone.now()
    Series.objects.filter(pk=series_id).update(number_of_instances=F("number_of_instances") + 1, updated_at=now)
    if not new_series:
        Study.objects.filter(pk=study_id).update(number_of_instances=F("number_of_instances") + 1, updated_at=now)
        return
    Study.objects.select_for_update().filter(pk=study_id).values_list("pk", flat=True).get()
    modalities = sorted({m for m in Series.objects.filter(study_id=study_id).values_list("modality", flat=True) if m})
    Study.objects.filter(pk=study_id).update(
        number_of_instances=F("number_of_instances") + 1,
        number_of_series=Series.objects.filter(study_id=study_id).count(),
        modalities="\\".join(modalities)[:64],
        updated_at=now,
    )


def study_counts_refresh(*, study_id: int) -> None:
    """Recount a study's and its series' counts and modalities from the rows, under the study's row lock: for
    repairs and for code that removes instances (ingestion only ever adds, see `_count_added`)."""
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


def ingest_process(*, item_id: int) -> IngestItem | None:
    """Run one received item through every check into the archive. Idempotent: a second call for an item that
    another worker holds or has finished does nothing and returns None.

    Side effects: the instance blob in the primary and replica stores, Patient/Study/Series/Instance rows, one
    INSTANCES_STORED audit event per stored instance (with patient and study), a thumbnail task for a series
    that has none; on rejection, an INGEST_REJECTED event and for malware a SecurityAlert.
    """
    if not _claim(item_id):
        return None
    item = IngestItem.objects.select_related("quarantine", "actor", "device").get(pk=item_id)
    tenant = current_tenant()
    try:
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
            data = blob_read(blob=item.quarantine)
        except BlobUnreadable as exc:
            raise Rejected("The received bytes in quarantine are damaged.", failure=IngestItem.Failure.LOST) from exc
        verdict = _check(data)
        sha256 = hashlib.sha256(verdict.data).hexdigest()
        try:
            return _store(item, verdict, sha256, tenant)
        except IntegrityError:
            # Another worker stored the same SOP Instance UID between our look and our insert.
            item = IngestItem.objects.select_related("quarantine", "actor", "device").get(pk=item_id)
            existing = Instance.objects.get(sop_instance_uid=verdict.parsed.sop_instance_uid)
            with transaction.atomic():
                return _resolve_existing(item, existing, verdict)
    except Rejected as exc:
        _reject(item, exc)
        return item
    except scanning.ScanError:
        # The scanner is down: a scan that did not happen never counts as clean. Give the item back so that a
        # retry, or the sweeper, can take it again.
        IngestItem.objects.filter(pk=item_id, state=IngestItem.State.PROCESSING).update(
            state=IngestItem.State.RECEIVED, reason="waiting for the malware scanner", claimed_at=None
        )
        raise
    except Exception as exc:
        # A fault of ours, not of the object: the item is rejected (not left `processing` for the sweeper to hand
        # to the next worker, which would fail the same way), and the sender is told. The log names the class and
        # the item only: exception messages may quote values of the data set.
        logger.error("ingest item %s failed unexpectedly (%s)", item.public_id, type(exc).__name__)
        item = IngestItem.objects.select_related("quarantine", "actor", "device").get(pk=item_id)
        _reject(
            item,
            Rejected(
                f"An internal error stopped processing ({type(exc).__name__}); the object is kept in quarantine "
                f"for review (ingest item {item.public_id}).",
                failure=IngestItem.Failure.INTERNAL,
            ),
        )
        return item


def _store(item: IngestItem, verdict: Verdict, sha256: str, tenant: Tenant) -> IngestItem:
    with transaction.atomic():
        existing = Instance.objects.filter(sop_instance_uid=verdict.parsed.sop_instance_uid).first()
        if existing is not None:
            return _resolve_existing(item, existing, verdict)
        blob = blob_write(
            kind=Blob.Kind.INSTANCE, data=verdict.data, study_instance_uid=verdict.parsed.study_instance_uid
        )
        instance, new_series = _index(
            tenant=tenant, parsed=verdict.parsed, blob=blob, size=len(verdict.data), sha256=sha256
        )
        _finish(item, IngestItem.State.STORED, instance=instance, release_quarantine=True,
                reason="preamble zeroed" if verdict.preamble_zeroed else "")  # fmt: skip
        audit_event_record(
            event=EventType.INSTANCES_STORED,
            actor=item.actor,
            target=instance,
            participants=_study_participants(instance),
            system_principal=_principal(item),
            source_address=item.source_address,
            extra={"source": item.source, "batch": str(item.batch), "count": 1, "bytes": len(verdict.data)},
        )
        if _thumbnail_due(instance.series, new_series=new_series):
            task_queue_on_commit("studies.tasks.series_thumbnail", tenant_id=tenant.pk, series_id=instance.series_id)
    return item


def _thumbnail_due(series: Series, *, new_series: bool) -> bool:
    """Queue the thumbnail task for a new series, and again for a series still without one when its count
    (as read before this instance) reaches a power of two: a series whose first instances cannot be drawn
    still gets one, at a cost of a few tasks per series rather than one per instance."""
    if new_series:
        return True
    if series.thumbnail_id is not None:
        return False
    count = series.number_of_instances + 1
    return count & (count - 1) == 0


def _principal(item: IngestItem) -> str:
    if item.device is not None:
        return f"dicom:{item.device.ae_title}"
    return "" if item.actor is not None else f"enclave:{item.source}"


def _stored_content_hash(existing: Instance) -> str:
    """The content hash of a stored instance; one stored before the hash existed gets it now, from its blob."""
    if existing.content_sha256:
        return existing.content_sha256
    try:
        parsed, _ = dicom_parse.parse(blob_read(blob=existing.blob), limits=ingest_limits())
    except dicom_parse.InvalidDicom:
        return ""  # stored under older checks than today's: only identical bytes count as the same
    existing.content_sha256 = parsed.content_sha256
    existing.save(update_fields=["content_sha256", "updated_at"])
    return existing.content_sha256


def _resolve_existing(item: IngestItem, existing: Instance, verdict: Verdict) -> IngestItem:
    """The same SOP Instance UID again. The same instance (the same pixel data and identifying attributes:
    `studies.dicom.parse.content_hash`, not the file bytes, which differ between a C-STORE receiver's rebuilt
    header and the sender's file) is a no-op; different content is kept apart as a conflict, never silently
    replacing what is stored."""
    same = existing.sha256 == hashlib.sha256(verdict.data).hexdigest()
    if same or _stored_content_hash(existing) == verdict.parsed.content_sha256:
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
            target=item,
            outcome=Outcome.MINOR_FAILURE,
            outcome_description=exc.reason,
            system_principal=_principal(item),
            source_address=item.source_address,
            extra=details,
        )


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
