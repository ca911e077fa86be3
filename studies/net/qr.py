"""Query/retrieve on the DICOM listener: C-FIND, C-GET and C-MOVE, Patient Root and Study Root (PS3.4 Annex C).

Who may ask. The association was admitted by `studies.net.scp` (called AE title -> tenant; calling AE title and
address -> an approved device of that tenant). Every request asks the device policy registered with
`tenants.access` again (`access.device_may(device, DEVICE_READ)`), so a device revoked mid-association loses
access at its next request. Every query and retrieval is on the tenant's audit trail (studies.services.reads)
under the system principal `dicom:<calling AE title>`; a retrieval is recorded BEFORE the first data set leaves,
and if that record cannot be written nothing is sent and the peer gets a failure status.

This module only translates: the identifier (studies.dicom.query) into keys of the one matcher
(studies.selectors.matching), the rows back into response identifiers by the same catalogue.

C-GET sends the stored bytes' data set back on the same association; C-MOVE opens an association to the move
destination, which must be an approved device of the same tenant registered with host and port
(`devices.selectors.move_destination_get`), else 0xA801 and a refusal on the audit trail. The C-MOVE association
calls the destination as the listener's AE title (settings.DICOM_AE_TITLE).

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
from typing import Any
from urllib.parse import urlencode

from django.db import connection
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import StoragePresentationContexts, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # built at import time by pynetdicom

from audit.context import audit_context
from audit.events import EventType, Outcome
from devices.selectors import move_destination_get
from portal.web.limits import Limited, limit_hit, limit_hit_record
from studies.dicom.query import Level, Query, QueryError, query_parse, response_identifier
from studies.models import Instance, Study
from studies.net.peer import Peer
from studies.selectors import (
    InvalidQuery,
    Key,
    SearchTimeout,
    attribute_lookup,
    attribute_value,
    attributes_at_or_above,
    dicom_search,
    levels_at_or_above,
)
from studies.services.reads import instances_transferred_record, retrieval_refusal_record, studies_query_record
from studies.storage.blobs import BlobUnreadable, blob_read
from tenants import access
from tenants.scoping import tenant_scope

__all__ = ["StoreTally", "find", "get", "move"]

logger = logging.getLogger(__name__)

# Q/R statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_OUT_OF_RESOURCES_MATCHES = 0xA701  # C-GET/C-MOVE: out of resources, unable to calculate number of matches
STATUS_UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
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
_NOT_APPROVED = "The device is no longer approved."
_NOT_RECORDED = "The retrieval could not be recorded; nothing was sent."


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
    with tenant_scope(peer.tenant), audit_context(source_address=peer.address, system_principal=peer.principal):
        yield


def _device_may_read(peer: Peer) -> bool:
    """The device policy of tenants.access, asked at every request. Runs inside the peer's scope."""
    return access.device_may(peer.device, access.DEVICE_READ)


def _keys(query: Query) -> list[Key]:
    """The identifier's keys that are matching keys of the query's level, as keys of the one matcher."""
    allowed = levels_at_or_above(query.level)
    keys = []
    for keyword, value in query.keys.items():
        attribute = attribute_lookup(keyword)
        if attribute is not None and attribute.level in allowed and value:
            keys.append(Key(attribute, value))
    return keys


def _values(level: Level, row: Any) -> dict[str, Any]:
    return {a.keyword: attribute_value(row, a, level=level) for a in attributes_at_or_above(level)}


def _query_string(query: Query) -> str:
    return urlencode(query.summary())


def _studies_of(level: Level, rows: list[Any]) -> list[Study]:
    if level is Level.PATIENT:
        return []
    return [row if level is Level.STUDY else row.study if level is Level.SERIES else row.series.study for row in rows]


def _find_record(
    peer: Peer,
    *,
    sop_class_uid: str,
    query: Query | None,
    rows: list[Any] = (),  # type: ignore[assignment]
    outcome: int = Outcome.SUCCESS,
    reason: str = "",
) -> None:
    level = query.level if query is not None else Level.STUDY
    studies_query_record(
        resource=sop_class_uid,
        query_string=_query_string(query) if query is not None else "",
        studies=_studies_of(level, list(rows)),
        patients=list(rows) if level is Level.PATIENT else [],
        results=len(rows),
        source_address=peer.address,
        system_principal=peer.principal,
        outcome=outcome,
        reason=reason,
        extra={
            "calling_ae": peer.calling_ae,
            "called_ae": peer.called_ae,
            "keys": query.summary() if query is not None else {},
        },
    )


def _refusal_record(peer: Peer, *, event: EventType, reason: str, **extra: Any) -> None:
    """A refused retrieval (nothing sent), recorded by the reads service like every other read."""
    retrieval_refusal_record(
        event=event,
        tenant=peer.tenant,
        reason=reason,
        system_principal=peer.principal,
        source_address=peer.address,
        extra={"calling_ae": peer.calling_ae, "called_ae": peer.called_ae, **extra},
    )


# C-FIND
# ------------------------------------------------------------------------------


def _limit_hit(peer: Peer, action: str) -> Limited | None:
    """RATE_LIMITS for a DIMSE request, per device and per address (the same counters as the other doors' for
    that address); the first refusal of a window goes on the tenant's trail. Called inside the peer's scope."""
    limited = limit_hit(action, device=peer.device.pk, address=peer.address)
    if limited is not None:
        limit_hit_record(limited, tenant=peer.tenant, door="DICOM listener")
        logger.info("%s from %s refused: rate limit (%s per %s)", action, peer.calling_ae, limited.limit, limited.kind)
    return limited


def find(event: evt.Event, peer: Peer) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND: one pending response per match, then success; one STUDIES_QUERIED audit event per request
    (the keys sent, the number of matches, and the patients and studies returned; a refused query as a
    failure), written before the first match is sent."""
    sop_class_uid = str(event.request.AffectedSOPClassUID)
    try:
        with _as_peer(peer):
            if not _device_may_read(peer):
                _find_record(peer, sop_class_uid=sop_class_uid, query=None, outcome=Outcome.MINOR_FAILURE,
                             reason=_NOT_APPROVED)  # fmt: skip
                yield _status(STATUS_NOT_AUTHORISED, _NOT_APPROVED), None
                return
            limited = _limit_hit(peer, "search")
            if limited is not None:
                yield _status(STATUS_OUT_OF_RESOURCES, limited.message), None
                return
            query = None
            try:
                query = query_parse(event.identifier, sop_class_uid=sop_class_uid)
                rows = dicom_search(actor=peer.device, level=query.level, keys=_keys(query), limit=MAX_MATCHES + 1)
            except (QueryError, InvalidQuery) as exc:
                _find_record(peer, sop_class_uid=sop_class_uid, query=query, outcome=Outcome.MINOR_FAILURE,
                             reason=str(exc))  # fmt: skip
                yield _status(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
                return
            except SearchTimeout as exc:
                _find_record(peer, sop_class_uid=sop_class_uid, query=query, outcome=Outcome.MINOR_FAILURE,
                             reason=exc.reason)  # fmt: skip
                yield _status(STATUS_OUT_OF_RESOURCES, exc.reason), None
                return
            if len(rows) > MAX_MATCHES:
                comment = f"More than {MAX_MATCHES} matches: narrow the query."
                _find_record(peer, sop_class_uid=sop_class_uid, query=query, outcome=Outcome.MINOR_FAILURE,
                             reason=comment)  # fmt: skip
                yield _status(STATUS_OUT_OF_RESOURCES, comment), None
                return
            responses = [
                response_identifier(query, _values(query.level, row), retrieve_ae_title=peer.called_ae) for row in rows
            ]
            _find_record(peer, sop_class_uid=sop_class_uid, query=query, rows=rows)
    except Exception:
        # Nothing has been sent: an unexpected failure (the audit write among them) answers a failure status.
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


def _dataset(peer: Peer, instance: Instance) -> Dataset | str:
    try:
        with _as_peer(peer):
            data = blob_read(blob=instance.blob)
        return dcmread(io.BytesIO(data))
    except (BlobUnreadable, InvalidDicomError) as exc:
        # Both copies damaged, or bytes pydicom cannot read: that sub-operation fails (counted, on the trail as a
        # failed part of the retrieval); anything else is not this instance's fault and ends the request.
        logger.warning("Retrieval for %s: instance %s could not be read: %s", peer.calling_ae, instance.public_id,
                       type(exc).__name__)  # fmt: skip
        return _UNREADABLE


def _plan(event: evt.Event, peer: Peer, *, verb: EventType, **extra: Any) -> tuple[Query, list[Instance]] | Dataset:
    """Check, parse and match a C-GET/C-MOVE request, and record the retrieval (the transfer event, before any
    data leaves). A status Dataset (already audited) when refused. Raises if the record cannot be written."""
    sop_class_uid = str(event.request.AffectedSOPClassUID)
    with _as_peer(peer):
        if not _device_may_read(peer):
            _refusal_record(peer, event=verb, reason=_NOT_APPROVED, **extra)
            return _status(STATUS_NOT_AUTHORISED, _NOT_APPROVED)
        limited = _limit_hit(peer, "retrieve")
        if limited is not None:
            return _status(STATUS_OUT_OF_RESOURCES_MATCHES, limited.message)
        try:
            query = query_parse(event.identifier, sop_class_uid=sop_class_uid, retrieve=True)
            instances: list[Instance] = dicom_search(
                actor=peer.device, level=Level.IMAGE, keys=_keys(query), limit=MAX_RETRIEVE + 1
            )
        except (QueryError, InvalidQuery) as exc:
            _refusal_record(peer, event=verb, reason=str(exc), **extra)
            return _status(STATUS_IDENTIFIER_MISMATCH, str(exc))
        except SearchTimeout as exc:
            _refusal_record(peer, event=verb, reason=exc.reason, **extra)
            return _status(STATUS_OUT_OF_RESOURCES, exc.reason)
        if len(instances) > MAX_RETRIEVE:
            comment = "Too many instances for one retrieval: narrow it."
            _refusal_record(peer, event=verb, reason=comment, query=query.summary(), **extra)
            return _status(STATUS_OUT_OF_RESOURCES, comment)
        instances_transferred_record(
            event=verb,
            studies=[instance.series.study for instance in instances],
            count=len(instances),
            resource=sop_class_uid,
            source_address=peer.address,
            system_principal=peer.principal,
            extra={
                "calling_ae": peer.calling_ae,
                "called_ae": peer.called_ae,
                "query": query.summary(),
                "matches": len(instances),
                **extra,
            },
        )
    return query, instances


def _delivery_record(peer: Peer, *, verb: EventType, instances: list[Instance], statuses: list[int],
                     **extra: Any) -> None:  # fmt: skip
    """After the sub-operations: a second event only when some were not delivered (the retrieval itself is on the
    trail already). Not swallowed: a failure to write it reaches pynetdicom, which logs it."""
    completed, warning, failed = _counts(statuses)
    failed += len(instances) - len(statuses)  # unreadable, cancelled or never answered
    if failed == 0:
        return
    with _as_peer(peer):
        _refusal_record(
            peer,
            event=verb,
            reason=f"{failed} of {len(instances)} instances not delivered",
            delivered=completed + warning,
            failed=failed,
            **extra,
        )


def get(event: evt.Event, peer: Peer, tally: StoreTally) -> Iterator[Any]:
    """EVT_C_GET: the number of sub-operations, then each matching instance's data set, sent back by C-STORE on
    this association (the requestor proposed the storage contexts with the SCP role). The INSTANCES_RETRIEVED
    event (patients, studies, count) is written before the first data set; if it cannot be, nothing is sent
    and the peer gets 0xA702 (unable to perform sub-operations)."""
    try:
        plan = _plan(event, peer, verb=EventType.INSTANCES_RETRIEVED)
    except Exception:
        logger.exception("C-GET from %s could not be answered (nothing sent)", peer.calling_ae)
        connection.close()
        yield 1  # pynetdicom reads a count before any status
        yield _status(STATUS_UNABLE_TO_PERFORM_SUBOPERATIONS, _NOT_RECORDED), None
        return
    if isinstance(plan, Dataset):
        yield 1
        yield plan, None
        return
    _query, instances = plan
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
        delivered = list(statuses)
        tally.forget(event.assoc)
        _delivery_record(peer, verb=EventType.INSTANCES_RETRIEVED, instances=instances, statuses=delivered)


def _refusal_contexts() -> list[Any]:
    storage = [build_context(str(c.abstract_syntax)) for c in StoragePresentationContexts[: MAX_MOVE_CONTEXTS - 1]]
    return [build_context(Verification), *storage]


def _move_contexts(instances: list[Instance]) -> list[Any]:
    pairs = list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances))
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs[:MAX_MOVE_CONTEXTS]]


def move(event: evt.Event, peer: Peer) -> Iterator[Any]:
    """EVT_C_MOVE: the destination (an approved device of this tenant with host and port, else (None, None),
    which pynetdicom answers with 0xA801, recorded as a refusal), the number of sub-operations, then each
    instance's data set. The INSTANCES_MOVED event (destination AE title, count) is written before the
    association to the destination is opened; if it cannot be, nothing is sent."""
    destination_ae = str(event.move_destination or "").strip()
    try:
        with _as_peer(peer):
            destination = move_destination_get(ae_title=destination_ae) if destination_ae else None
            if destination is None:
                _refusal_record(peer, event=EventType.INSTANCES_MOVED, reason="Move destination unknown",
                                destination_ae=destination_ae)  # fmt: skip
    except Exception:
        logger.exception("C-MOVE from %s could not be answered (nothing sent)", peer.calling_ae)
        connection.close()
        # pynetdicom wants a destination before any status: with none it answers 0xA801 (the only way out here).
        yield None, None
        return
    if destination is None:
        logger.info("C-MOVE from %s refused: unknown move destination", peer.calling_ae)
        yield None, None
        return
    host, port = destination
    try:
        plan = _plan(event, peer, verb=EventType.INSTANCES_MOVED, destination_ae=destination_ae)
    except Exception:
        logger.exception("C-MOVE from %s could not be answered (nothing sent)", peer.calling_ae)
        connection.close()
        plan = _status(STATUS_UNABLE_TO_PERFORM_SUBOPERATIONS, _NOT_RECORDED)
    if isinstance(plan, Dataset):
        # Refused (and recorded, unless the record itself failed) after the destination was accepted: pynetdicom
        # opens the association before it reads the first status (and answers 0xA801 if the destination accepts
        # none of its contexts), so offer contexts any storage SCP accepts, one sub-operation, and the failure
        # status. No data set is sent.
        yield host, port, {"contexts": _refusal_contexts()}
        yield 1
        yield plan, None
        return
    _query, instances = plan
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
        _delivery_record(peer, verb=EventType.INSTANCES_MOVED, instances=instances, statuses=list(statuses),
                         destination_ae=destination_ae)  # fmt: skip
