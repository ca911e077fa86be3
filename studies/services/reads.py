"""The audit of reads (HIPAA 164.312(b), SECURITY.md E3): searches, retrievals, views, and their folding.

- A search (QIDO-RS, C-FIND, the study list) is one STUDIES_QUERIED (110112 Query) event with the raw query
  (base64, as DICOM's ParticipantObjectQuery) and the number of results, and the patients and studies it returned.
- A retrieval of DICOM objects (WADO-RS, WADO-URI application/dicom, C-GET; C-MOVE as INSTANCES_MOVED) is one
  110104 event with the patients, the studies and the number of instances, written before any data leaves.
- Participant objects are built by one function, `read_participants`.
- A view (metadata, frames, rendered images, thumbnails) is INSTANCES_ACCESSED (110103).
- A refusal of a read of a visible study is recorded with outcome 4 (minor failure).

Folding. A viewer scrolling through a CT asks for hundreds of frames a minute; one event per frame would drown
the trail, yet no read may be dropped. So frame, rendered and thumbnail reads of one study by one person are
folded within a window of `settings.READ_AUDIT_FOLD_SECONDS`:

1. The first read of a window writes its INSTANCES_ACCESSED event at once and opens a `ReadTally` row keyed
   (tenant, user, study, event type), in the same transaction.
2. Later reads inside the window only add 1 to the row's `folded` count (row-locked, committed with the read's
   request), and write no event.
3. When the window has passed, the next read of that key, or the periodic flush task
   (`read_tallies_flush_task`, in portal/celery_schedule.py), writes ONE summary INSTANCES_ACCESSED event
   "N further reads folded" (with the window and the opening event's sequence) and closes the row, in one
   transaction.

Audit rows are append-only, so the count cannot live in the opening event; it lives in a database row rather
than the cache, so a crashed process or a flushed Redis loses nothing: every count is committed before the read
is answered, and a committed count is written as an event by whoever closes the window next.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.services import audit_event_record
from studies.models import Patient, ReadTally, Study
from tenants.scoping import current_tenant

FOLDED_KINDS = frozenset({"frames", "rendered", "thumbnail"})


# A study as the audit names it, read as columns: (patient pk, patient ID, patient name, study pk, study UID,
# accession number). QIDO-RS reads its results this way (studies.selectors.dicom_search_values).
StudyRow = tuple[int, str, str, int, str, str]


def read_participants(
    *,
    patients: Iterable[Patient] = (),
    studies: Iterable[Study] = (),
    query: Mapping[str, Any] | None = None,
    study_rows: Iterable[StudyRow] = (),
) -> list[dict[str, Any]]:
    """The one builder of a read's participant objects (PS3.15 A.5: the query, then each patient and study once):
    a patient by id and name, a study by UID and accession number (as the ingest pipeline names them), a query
    by what was searched (`id`: the resource or SOP class, `query`: the raw query, base64). `study_rows`: more
    studies, as columns (`StudyRow`), after `studies`."""
    entries: list[dict[str, Any]] = []
    if query is not None:
        entries.append({"type": "query", **query})
    # Each entry a new dict, as `audit.services.participant` makes one of a mapping; built here directly, without
    # a call per entry: a search that answers 1,000 studies records some 2,000 (docs/BENCHMARKS.md, "h5 branch").
    seen_patients: set[int] = set()
    seen_studies: set[int] = set()
    for patient in patients:
        if patient.pk not in seen_patients:
            seen_patients.add(patient.pk)
            entries.append({"type": "patient", "id": patient.patient_id, "name": patient.name})
    columns = (
        (s.patient.pk, s.patient.patient_id, s.patient.name, s.pk, s.study_instance_uid, s.accession_number)
        for s in studies
    )
    for rows in (columns, study_rows):
        for patient_pk, patient_id, name, study_pk, study_uid, accession in rows:
            if patient_pk not in seen_patients:
                seen_patients.add(patient_pk)
                entries.append({"type": "patient", "id": patient_id, "name": name})
            if study_pk not in seen_studies:
                seen_studies.add(study_pk)
                entries.append({"type": "study", "id": study_uid, "detail": {"accession": accession}})
    return entries


def study_participants(study: Study) -> list[dict[str, Any]]:
    """The patient and the study (`read_participants` of one study)."""
    return read_participants(studies=[study])


def _encoded(query_string: str) -> str:
    return base64.b64encode(query_string.encode("utf-8")).decode("ascii")


def studies_query_record(
    *,
    actor: Any = None,
    resource: str,
    query_string: str,
    studies: Iterable[Study] = (),
    patients: Iterable[Patient] = (),
    study_rows: Iterable[StudyRow] = (),
    results: int,
    source_address: str | None,
    system_principal: str = "",
    outcome: int = Outcome.SUCCESS,
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
    actor_role: str = "",
) -> None:
    """One Query event for one search, from any door (QIDO-RS, C-FIND): the raw query string (base64 of its
    bytes: it may hold patient names, which the audit trail may keep but plain logs may not), the resource or
    SOP class searched, the number of results, and the patients and studies the results belong to (so a breach
    scope finds patients reached by a search; `study_rows`: studies read as columns, see `read_participants`).
    A refused search is recorded with its `outcome` and `reason`.
    Raises if the event cannot be written: the caller must then not answer with the results. `actor_role`: the
    role of the membership the request was let in by (a door that has it saves the audit writer reading it
    again); without it the writer looks it up."""
    encoded = _encoded(query_string)
    audit_event_record(
        event=EventType.STUDIES_QUERIED,
        actor=actor,
        participants=read_participants(
            patients=patients,
            studies=studies,
            study_rows=study_rows,
            query={"id": resource, "query": encoded, "detail": {"results": results}},
        ),
        outcome=outcome,
        actor_role=actor_role,
        outcome_description=reason,
        source_address=source_address,
        system_principal=system_principal,
        extra={"resource": resource, "query": encoded, "results": results, **(extra or {})},
    )


def instances_transferred_record(
    *,
    event: EventType = EventType.INSTANCES_RETRIEVED,
    actor: Any = None,
    studies: Iterable[Study] = (),
    study_rows: Iterable[StudyRow] = (),
    count: int,
    resource: str,
    source_address: str | None,
    system_principal: str = "",
    outcome: int = Outcome.SUCCESS,
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
    actor_role: str = "",
) -> None:
    """A retrieval of `count` DICOM objects of `studies` (WADO-RS, C-GET, C-MOVE), never folded. Written BEFORE
    the first byte leaves: raises if it cannot be written, and the caller then sends nothing. `actor_role`: as
    for `studies_query_record` (the role the request was let in by; without it the writer looks it up);
    `study_rows`: studies read as columns, see `read_participants`."""
    audit_event_record(
        event=event,
        actor=actor,
        participants=read_participants(studies=studies, study_rows=study_rows),
        outcome=outcome,
        actor_role=actor_role,
        outcome_description=reason,
        source_address=source_address,
        system_principal=system_principal,
        extra={"resource": resource, "count": count, **(extra or {})},
    )


def instances_retrieved_record(
    *,
    actor: Any,
    study: Study | StudyRow,
    count: int,
    resource: str,
    transfer_syntax: str = "",
    source_address: str | None,
    actor_role: str = "",
) -> None:
    """A retrieval of `count` DICOM objects of `study` (never folded; a Study, or a StudyRow as WADO-RS reads it).
    `actor_role`: see `instances_transferred_record` (WADO-RS passes its membership's: one query fewer under the
    chain lock)."""
    instances_transferred_record(
        actor=actor,
        studies=[study] if isinstance(study, Study) else (),
        study_rows=() if isinstance(study, Study) else [study],
        count=count,
        resource=resource,
        source_address=source_address,
        extra={"transfer_syntax": transfer_syntax},
        actor_role=actor_role,
    )


def read_refused_record(*, actor: Any, study: Study, resource: str, reason: str, source_address: str | None) -> None:
    """A read of a visible study that was refused (outcome 4). A study the caller cannot see is no refusal: it
    is a 404 like a missing one, and recording it would say the study exists."""
    audit_event_record(
        event=EventType.INSTANCES_ACCESSED,
        actor=actor,
        participants=study_participants(study),
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=reason,
        source_address=source_address,
        extra={"resource": resource},
    )


def read_unavailable_record(*, actor: Any, study_uid: str, resource: str, source_address: str | None) -> None:
    """A read aimed at a study the caller may not see (or that does not exist): the caller gets the same 404 as
    for a missing study, and the attempt is on the trail as a failure, naming only the UID the caller sent."""
    audit_event_record(
        event=EventType.INSTANCES_ACCESSED,
        actor=actor,
        participants=[{"type": "study", "id": (study_uid or "")[:64], "role": "requested"}],
        outcome=Outcome.MINOR_FAILURE,
        outcome_description="not visible to the caller, or missing",
        source_address=source_address,
        extra={"resource": resource[:300]},
    )


def instances_accessed_record(
    *, actor: Any, study: Study, kind: str, count: int, resource: str, source_address: str | None
) -> None:
    """A view of `count` instances of `study`. Metadata reads are always written; frame, rendered and
    thumbnail reads are folded (see the module docstring). Runs in its own transaction."""
    extra = {"resource": resource, "kind": kind, "count": count}
    if kind not in FOLDED_KINDS:
        audit_event_record(
            event=EventType.INSTANCES_ACCESSED,
            actor=actor,
            participants=study_participants(study),
            source_address=source_address,
            extra=extra,
        )
        return
    for _ in range(3):
        try:
            _folded_read(actor=actor, study=study, extra=extra, source_address=source_address)
            return
        except IntegrityError:
            continue  # another request opened the window at the same moment: count into it
    raise RuntimeError("could not record a folded read")


@transaction.atomic
def _folded_read(*, actor: Any, study: Study, extra: dict[str, Any], source_address: str | None) -> None:
    now = timezone.now()
    window = timedelta(seconds=settings.READ_AUDIT_FOLD_SECONDS)
    event_type = int(EventType.INSTANCES_ACCESSED)
    tally = (
        ReadTally.objects.select_for_update()
        .filter(user=actor, study=study, event_type=event_type)
        .select_related("study__patient", "user")
        .first()
    )
    if tally is not None and now - tally.window_started_at < window:
        tally.folded += 1
        tally.last_read_at = now
        tally.save(update_fields=["folded", "last_read_at", "updated_at"])
        return
    if tally is not None:
        _close(tally)
    event = audit_event_record(
        event=EventType.INSTANCES_ACCESSED,
        actor=actor,
        participants=study_participants(study),
        source_address=source_address,
        extra={**extra, "folding_window_seconds": settings.READ_AUDIT_FOLD_SECONDS},
    )
    with transaction.atomic():  # a savepoint: a concurrent opener makes this fail, and the caller retries
        ReadTally.objects.create(
            tenant=current_tenant(),
            user=actor,
            study=study,
            event_type=event_type,
            window_started_at=now,
            first_sequence=event.sequence,
            last_read_at=now,
        )


def _close(tally: ReadTally) -> None:
    """Write the summary of a passed window (if reads were folded into it) and delete its row. The caller holds
    the row lock inside a transaction."""
    if tally.folded:
        audit_event_record(
            event=EventType.INSTANCES_ACCESSED,
            actor=tally.user,
            participants=study_participants(tally.study),
            outcome_description=f"{tally.folded} further reads folded",
            system_principal="enclave:read-audit",
            extra={
                "kind": "folded",
                "count": tally.folded,
                "folded_reads": tally.folded,
                "window_started_at": tally.window_started_at.isoformat(),
                "last_read_at": tally.last_read_at.isoformat(),
                "first_event_sequence": tally.first_sequence,
            },
        )
    tally.delete()


@transaction.atomic
def read_tallies_flush(*, now: Any = None) -> int:
    """Close every window of the current tenant that has passed: one summary event per window with folded
    reads. Idempotent (a closed window's row is gone); safe beside live reads (rows are locked, skipped if
    busy). Returns the number of windows closed."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.READ_AUDIT_FOLD_SECONDS)
    tallies = list(
        ReadTally.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(window_started_at__lte=cutoff)
        .select_related("study__patient", "user")
        .order_by("pk")
    )
    for tally in tallies:
        _close(tally)
    return len(tallies)


def read_tallies_close_for_study(*, study: Study) -> int:
    """Close the study's open windows now, whether passed or not (the study is about to be deleted), so their
    folded reads reach the trail. Runs in the caller's transaction. Returns the number closed."""
    tallies = list(
        ReadTally.objects.select_for_update(of=("self",)).filter(study=study).select_related("study__patient", "user")
    )
    for tally in tallies:
        _close(tally)
    return len(tallies)


def retrieval_refusal_record(
    *,
    event: EventType,
    tenant: Any,
    reason: str,
    system_principal: str,
    source_address: str | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """A retrieval refused before anything was sent (C-GET/C-MOVE: unknown destination, device not approved,
    malformed identifier): a failed read on the trail, with a count of nothing sent."""
    audit_event_record(
        event=event,
        tenant=tenant,
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=reason,
        system_principal=system_principal,
        source_address=source_address,
        extra={**(extra or {}), "count": 0},
    )
