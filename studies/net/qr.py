"""Query/retrieve on the DICOM listener: C-FIND, C-GET and C-MOVE, Patient Root and Study Root (PS3.4 Annex C).

Who may ask. The association was admitted by `studies.net.scp` (called AE title -> tenant; calling AE title and
address -> an approved device of that tenant). A device is not a person: it holds no role and no share, so
`tenants.access` (which decides for people) is not asked. The decision for devices, made here and re-checked at
every request (a device revoked mid-association loses access at its next request): an APPROVED modality or
workstation of the tenant reads the whole tenant's archive (what a PACS workstation or a modality fetching
priors needs), and nothing of any other tenant. Every query and retrieval is on the tenant's audit trail under
the system principal `dicom:<calling AE title>`.

Matching rules are those of `studies.dicom.query`. C-GET sends the stored bytes' data set back on the same
association; C-MOVE opens an association to the move destination, which must be an approved device of the same
tenant registered with host and port (`devices.selectors.move_destination_get`), else 0xA801 and a refusal on
the audit trail. The C-MOVE association calls the destination as the listener's AE title (settings.DICOM_AE_TITLE).

Threads: each handler runs in its association's thread; tenant scopes are opened around database work only,
never across a `yield` (pynetdicom resumes the generator after each sub-operation).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.db import connection, models
from django.db.models import Count, Q, Sum
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # built at import time by pynetdicom

from audit.context import audit_context
from audit.events import EventType, Outcome
from audit.services import audit_event_record, participant
from devices.selectors import dicom_peer_get, move_destination_get
from studies.dicom.query import (
    ATTRIBUTES,
    DateRange,
    Exact,
    Level,
    Query,
    QueryError,
    Wildcard,
    query_parse,
    response_identifier,
)
from studies.models import Instance, Patient, Series, Study
from studies.storage.blobs import blob_read
from tenants.scoping import tenant_scope

if TYPE_CHECKING:
    from studies.net.scp import Peer

__all__ = ["StoreTally", "find", "get", "move"]

logger = logging.getLogger(__name__)

# Q/R statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000
STATUS_NOT_AUTHORISED = 0x0124

# More matches than this is a query to narrow, not a list to send (and C-GET/C-MOVE count in 16 bits).
MAX_MATCHES = 10_000
MAX_RETRIEVE = 65_535
# A requestor proposes at most 128 presentation contexts (PS3.8 9.3.2.2: odd ids 1-255).
MAX_MOVE_CONTEXTS = 128
MOVE_MAXIMUM_PDU_SIZE = 1024 * 1024

# A pending result that is not a Dataset: pynetdicom counts it as a failed C-STORE sub-operation (its documented
# "invalid dataset" branch), so an instance whose blob cannot be read is reported failed, not silently skipped.
_UNREADABLE = "unreadable"

_FIELDS: dict[str, str] = {
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer",
    "PatientName": "name",
    "PatientBirthDate": "birth_date",
    "PatientSex": "sex",
    "StudyInstanceUID": "study_instance_uid",
    "StudyDate": "study_date",
    "AccessionNumber": "accession_number",
    "StudyDescription": "description",
    "ReferringPhysicianName": "referring_physician",
    "SeriesInstanceUID": "series_instance_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "description",
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
}
_PERSON_NAMES = {"PatientName", "ReferringPhysicianName"}

# How a model at the query level reaches the row of each level above it.
_PREFIX: dict[Level, dict[Level, str]] = {
    Level.PATIENT: {Level.PATIENT: ""},
    Level.STUDY: {Level.PATIENT: "patient__", Level.STUDY: ""},
    Level.SERIES: {Level.PATIENT: "study__patient__", Level.STUDY: "study__", Level.SERIES: ""},
    Level.IMAGE: {
        Level.PATIENT: "series__study__patient__",
        Level.STUDY: "series__study__",
        Level.SERIES: "series__",
        Level.IMAGE: "",
    },
}


# Tally of C-STORE sub-operations
# ------------------------------------------------------------------------------


class StoreTally:
    """C-STORE response statuses seen on associations where we are the storage SCU (the C-GET requestor's, and
    our own association to a C-MOVE destination). pynetdicom keeps its sub-operation counts to itself; the audit
    record needs them, so `on_dimse_recv` (bound to EVT_DIMSE_RECV) records each C-STORE-RSP status here."""

    def __init__(self) -> None:
        self._statuses: weakref.WeakKeyDictionary[Association, list[int]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def watch(self, assoc: Association) -> list[int]:
        with self._lock:
            return self._statuses.setdefault(assoc, [])

    def forget(self, assoc: Association) -> None:
        with self._lock:
            self._statuses.pop(assoc, None)

    def on_dimse_recv(self, event: evt.Event) -> None:
        message = event.message
        if not isinstance(message, C_STORE_RSP):
            return
        with self._lock:
            statuses = self._statuses.get(event.assoc)
        if statuses is not None:
            statuses.append(int(getattr(message.command_set, "Status", -1)))


def _counts(statuses: list[int]) -> tuple[int, int, int]:
    """(completed, warning, failed) from C-STORE statuses (PS3.4 B.2.3: 0xB000, 0xB007, 0xB006 are warnings)."""
    completed = sum(1 for s in statuses if s == 0x0000)
    warning = sum(1 for s in statuses if s in (0xB000, 0xB006, 0xB007))
    return completed, warning, len(statuses) - completed - warning


# Shared steps
# ------------------------------------------------------------------------------


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


@contextlib.contextmanager
def _as_peer(peer: Peer) -> Iterator[None]:
    with (
        tenant_scope(peer.tenant),
        audit_context(source_address=peer.address, system_principal=f"dicom:{peer.calling_ae}"),
    ):
        yield


def _device_may_read(peer: Peer) -> bool:
    """The devices' read decision (see the module docstring): still an approved modality or workstation of this
    tenant, at this address. Runs inside the peer's scope."""
    return dicom_peer_get(ae_title=peer.calling_ae, address=peer.address) is not None


def _q(keyword: str, prefix: str, match: Any) -> Q:
    name = prefix + _FIELDS[keyword]
    insensitive = keyword in _PERSON_NAMES
    if isinstance(match, Wildcard):
        return Q(**{f"{name}__{'iregex' if insensitive else 'regex'}": match.regex})
    if isinstance(match, DateRange):
        q = Q()
        if match.start is not None:
            q &= Q(**{f"{name}__gte": match.start})
        if match.end is not None:
            q &= Q(**{f"{name}__lte": match.end})
        return q
    if insensitive:
        q = Q()
        for value in match.values:
            q |= Q(**{f"{name}__iexact": value})
        return q
    if len(match.values) == 1:
        return Q(**{name: match.values[0]})
    return Q(**{f"{name}__in": list(match.values)})


_LEVEL_OF_KEY = {keyword: attribute.level for keyword, attribute in ATTRIBUTES.items()}


def _queryset(query: Query) -> models.QuerySet[Any]:
    """The current tenant's rows at the query's level that match it, with what the response needs joined."""
    level = query.level
    prefixes = _PREFIX[level]
    qs: models.QuerySet[Any]
    if level is Level.PATIENT:
        qs = Patient.objects.annotate(
            n_studies=Count("studies", distinct=True),
            n_series=Sum("studies__number_of_series"),
            n_instances=Sum("studies__number_of_instances"),
        )
    elif level is Level.STUDY:
        qs = Study.objects.select_related("patient")
    elif level is Level.SERIES:
        qs = Series.objects.select_related("study__patient")
    else:
        qs = Instance.objects.select_related("series__study__patient")
    for keyword, match in query.matches.items():
        if keyword == "ModalitiesInStudy":
            assert isinstance(match, Exact)  # query_parse: a modalities key is always an Exact list
            studies = Series.objects.filter(modality__in=list(match.values)).values("study_id")
            qs = qs.filter(**{f"{prefixes[Level.STUDY]}pk__in": studies})
            continue
        qs = qs.filter(_q(keyword, prefixes[_LEVEL_OF_KEY[keyword]], match))
    order = {
        Level.PATIENT: ["patient_id", "pk"],
        Level.STUDY: ["study_date", "pk"],
        Level.SERIES: ["series_number", "pk"],
        Level.IMAGE: ["instance_number", "pk"],
    }[level]
    return qs.order_by(*order)


def _patient_values(patient: Patient) -> dict[str, Any]:
    return {
        "PatientID": patient.patient_id,
        "IssuerOfPatientID": patient.issuer,
        "PatientName": patient.name,
        "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex,
    }


def _study_values(study: Study) -> dict[str, Any]:
    return {
        **_patient_values(study.patient),
        "StudyInstanceUID": study.study_instance_uid,
        "StudyDate": study.study_date,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
        "StudyDescription": study.description,
        "ReferringPhysicianName": study.referring_physician,
        "ModalitiesInStudy": study.modalities,
        "NumberOfStudyRelatedSeries": study.number_of_series,
        "NumberOfStudyRelatedInstances": study.number_of_instances,
    }


def _series_values(series: Series) -> dict[str, Any]:
    return {
        **_study_values(series.study),
        "SeriesInstanceUID": series.series_instance_uid,
        "Modality": series.modality,
        "SeriesNumber": series.series_number,
        "SeriesDescription": series.description,
        "NumberOfSeriesRelatedInstances": series.number_of_instances,
    }


def _values(level: Level, row: Any) -> dict[str, Any]:
    if level is Level.PATIENT:
        return {
            **_patient_values(row),
            "NumberOfPatientRelatedStudies": row.n_studies,
            "NumberOfPatientRelatedSeries": row.n_series or 0,
            "NumberOfPatientRelatedInstances": row.n_instances or 0,
        }
    if level is Level.STUDY:
        return _study_values(row)
    if level is Level.SERIES:
        return _series_values(row)
    return {
        **_series_values(row.series),
        "SOPInstanceUID": row.sop_instance_uid,
        "SOPClassUID": row.sop_class_uid,
        "InstanceNumber": row.instance_number,
        "Rows": row.rows,
        "Columns": row.columns,
        "NumberOfFrames": row.frames,
    }


def _record(
    peer: Peer,
    *,
    event: EventType,
    extra: dict[str, Any],
    participants: list[dict[str, Any]] = (),  # type: ignore[assignment]
    outcome: int = Outcome.SUCCESS,
    description: str = "",
) -> None:
    audit_event_record(
        event=event,
        tenant=peer.tenant,
        participants=participants,
        outcome=outcome,
        outcome_description=description,
        system_principal=f"dicom:{peer.calling_ae}",
        source_address=peer.address,
        extra={"calling_ae": peer.calling_ae, "called_ae": peer.called_ae, **extra},
    )


def _query_participant(sop_class_uid: str, summary: dict[str, str]) -> dict[str, Any]:
    return participant({"type": "query", "id": sop_class_uid, "detail": summary})


# C-FIND
# ------------------------------------------------------------------------------


def find(event: evt.Event, peer: Peer) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND: one pending response per match, then success; one STUDIES_QUERIED audit event per request
    (the keys sent and the number of matches; a refused query as a failure)."""
    sop_class_uid = str(event.request.AffectedSOPClassUID)
    try:
        with _as_peer(peer):
            if not _device_may_read(peer):
                _record(
                    peer,
                    event=EventType.STUDIES_QUERIED,
                    outcome=Outcome.MINOR_FAILURE,
                    description="The device is no longer approved.",
                    extra={"matches": 0},
                )
                yield _status(STATUS_NOT_AUTHORISED, "The device is no longer approved."), None
                return
            try:
                query = query_parse(event.identifier, sop_class_uid=sop_class_uid)
            except QueryError as exc:
                _record(
                    peer,
                    event=EventType.STUDIES_QUERIED,
                    outcome=Outcome.MINOR_FAILURE,
                    description=str(exc),
                    extra={"matches": 0},
                    participants=[participant({"type": "query", "id": sop_class_uid})],
                )
                yield _status(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
                return
            summary = query.summary()
            rows = list(_queryset(query)[: MAX_MATCHES + 1])
            if len(rows) > MAX_MATCHES:
                comment = f"More than {MAX_MATCHES} matches: narrow the query."
                _record(
                    peer,
                    event=EventType.STUDIES_QUERIED,
                    outcome=Outcome.MINOR_FAILURE,
                    description=comment,
                    extra={"query": summary, "matches": len(rows)},
                    participants=[_query_participant(sop_class_uid, summary)],
                )
                yield _status(STATUS_OUT_OF_RESOURCES, comment), None
                return
            responses = [
                response_identifier(query, _values(query.level, row), retrieve_ae_title=peer.called_ae) for row in rows
            ]
            _record(
                peer,
                event=EventType.STUDIES_QUERIED,
                extra={"query": summary, "matches": len(rows)},
                participants=[_query_participant(sop_class_uid, summary)],
            )
    except Exception:
        logger.exception("C-FIND from %s could not be answered", peer.calling_ae)
        connection.close()
        yield _status(STATUS_UNABLE_TO_PROCESS, "The archive could not answer; try again later."), None
        return
    for response in responses:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        yield STATUS_PENDING, response


# C-GET and C-MOVE
# ------------------------------------------------------------------------------


def _instances(query: Query) -> list[Instance]:
    image_query = Query(model=query.model, level=Level.IMAGE, matches=query.matches, requested=query.requested)
    qs = _queryset(image_query).select_related("blob")
    return list(
        qs.order_by("series__study_id", "series__series_number", "series_id", "instance_number", "pk")[
            : MAX_RETRIEVE + 1
        ]
    )


def _retrieval_participants(instances: list[Instance]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for instance in instances:
        study = instance.series.study
        patient = study.patient
        seen.setdefault(
            ("patient", patient.patient_id),
            participant({"type": "patient", "id": patient.patient_id, "name": patient.name}),
        )
        seen.setdefault(
            ("study", study.study_instance_uid),
            participant(
                {"type": "study", "id": study.study_instance_uid, "detail": {"accession": study.accession_number}}
            ),
        )
    return list(seen.values())


def _dataset(peer: Peer, instance: Instance) -> Dataset | str:
    try:
        with _as_peer(peer):
            data = blob_read(blob=instance.blob)
        return dcmread(io.BytesIO(data))
    except Exception:
        logger.exception("Retrieval for %s: instance %s could not be read", peer.calling_ae, instance.public_id)
        return _UNREADABLE


def _plan(event: evt.Event, peer: Peer, *, verb: EventType) -> tuple[Query, list[Instance]] | Dataset:
    """Check, parse and match a C-GET/C-MOVE request; a status Dataset (already audited) when refused."""
    sop_class_uid = str(event.request.AffectedSOPClassUID)
    with _as_peer(peer):
        if not _device_may_read(peer):
            _record(
                peer,
                event=verb,
                outcome=Outcome.MINOR_FAILURE,
                description="The device is no longer approved.",
                extra={"count": 0},
            )
            return _status(STATUS_NOT_AUTHORISED, "The device is no longer approved.")
        try:
            query = query_parse(event.identifier, sop_class_uid=sop_class_uid, retrieve=True)
        except QueryError as exc:
            _record(peer, event=verb, outcome=Outcome.MINOR_FAILURE, description=str(exc), extra={"count": 0})
            return _status(STATUS_IDENTIFIER_MISMATCH, str(exc))
        instances = _instances(query)
        if len(instances) > MAX_RETRIEVE:
            comment = "Too many instances for one retrieval: narrow it."
            _record(
                peer,
                event=verb,
                outcome=Outcome.MINOR_FAILURE,
                description=comment,
                extra={"query": query.summary(), "count": 0},
            )
            return _status(STATUS_OUT_OF_RESOURCES, comment)
    return query, instances


def _record_transfer(
    peer: Peer, *, verb: EventType, query: Query, instances: list[Instance], statuses: list[int], **extra: Any
) -> None:
    completed, warning, failed = _counts(statuses)
    failed += len(instances) - len(statuses)  # unreadable, cancelled or never answered
    try:
        with _as_peer(peer):
            _record(
                peer,
                event=verb,
                outcome=Outcome.SUCCESS if failed == 0 else Outcome.MINOR_FAILURE,
                description="" if failed == 0 else f"{failed} of {len(instances)} instances not delivered",
                participants=_retrieval_participants(instances),
                extra={
                    "query": query.summary(),
                    "count": completed + warning,
                    "warning": warning,
                    "failed": failed,
                    "matches": len(instances),
                    **extra,
                },
            )
    except Exception:
        logger.exception("The retrieval by %s could not be recorded", peer.calling_ae)
        connection.close()


def get(event: evt.Event, peer: Peer, tally: StoreTally) -> Iterator[Any]:
    """EVT_C_GET: the number of sub-operations, then each matching instance's data set, sent back by C-STORE on
    this association (the requestor proposed the storage contexts with the SCP role). One INSTANCES_RETRIEVED
    event at the end with the patients and studies and the completed and failed counts."""
    try:
        plan = _plan(event, peer, verb=EventType.INSTANCES_RETRIEVED)
    except Exception:
        logger.exception("C-GET from %s could not be answered", peer.calling_ae)
        connection.close()
        yield _status(STATUS_UNABLE_TO_PROCESS, "The archive could not answer; try again later."), None
        return
    if isinstance(plan, Dataset):
        yield plan, None
        return
    query, instances = plan
    statuses = tally.watch(event.assoc)
    del statuses[:]
    try:
        yield len(instances)
        for instance in instances:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, _dataset(peer, instance)
    finally:
        _record_transfer(
            peer, verb=EventType.INSTANCES_RETRIEVED, query=query, instances=instances, statuses=list(statuses)
        )
        tally.forget(event.assoc)


def _move_contexts(instances: list[Instance]) -> list[Any]:
    pairs = list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances))
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs[:MAX_MOVE_CONTEXTS]]


def move(event: evt.Event, peer: Peer) -> Iterator[Any]:
    """EVT_C_MOVE: the destination (an approved device of this tenant with host and port, else (None, None),
    which pynetdicom answers with 0xA801, recorded as a refusal), the number of sub-operations, then each
    instance's data set. One INSTANCES_MOVED event with the destination AE title and the counts."""
    destination_ae = str(event.move_destination or "").strip()
    try:
        with _as_peer(peer):
            destination = move_destination_get(ae_title=destination_ae) if destination_ae else None
            if destination is None:
                _record(
                    peer,
                    event=EventType.INSTANCES_MOVED,
                    outcome=Outcome.MINOR_FAILURE,
                    description="Move destination unknown",
                    extra={"destination_ae": destination_ae, "count": 0},
                )
        plan = None if destination is None else _plan(event, peer, verb=EventType.INSTANCES_MOVED)
    except Exception:
        logger.exception("C-MOVE from %s could not be answered", peer.calling_ae)
        connection.close()
        # pynetdicom wants a destination before any status: with none it answers 0xA801 (the only way out here).
        yield None, None
        return
    if destination is None or plan is None:
        logger.info("C-MOVE from %s refused: unknown move destination", peer.calling_ae)
        yield None, None
        return
    host, port = destination
    if isinstance(plan, Dataset):
        # Refused (and recorded) after the destination was accepted: pynetdicom opens the association before it
        # reads the first status, so give it a harmless context, one sub-operation, and the failure status.
        yield host, port, {"contexts": [build_context(Verification)]}
        yield 1
        yield plan, None
        return
    query, instances = plan
    statuses: list[int] = []

    def on_store_response(store_event: evt.Event) -> None:
        message = store_event.message
        if isinstance(message, C_STORE_RSP):
            statuses.append(int(getattr(message.command_set, "Status", -1)))

    options = {
        "contexts": _move_contexts(instances) or [build_context(Verification)],
        "max_pdu": MOVE_MAXIMUM_PDU_SIZE,
        "evt_handlers": [(evt.EVT_DIMSE_RECV, on_store_response)],
    }
    try:
        yield host, port, options
        yield len(instances)
        for instance in instances:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, _dataset(peer, instance)
    finally:
        _record_transfer(
            peer,
            verb=EventType.INSTANCES_MOVED,
            query=query,
            instances=instances,
            statuses=statuses,
            destination_ae=destination_ae,
        )
