"""The DICOM door: a Storage SCP (C-ECHO and C-STORE) that hands every received object to the ingest pipeline,
and the query/retrieve SCP (C-FIND, C-GET, C-MOVE: studies.net.qr) on the same associations.

One listener serves every tenant. The called AE title names the tenant; the calling AE title and the peer's
address must belong to an approved modality or workstation of that tenant, else the association is rejected and
a security alert is raised. The device policy registered with tenants.access is asked again at every C-FIND,
C-GET and C-MOVE, and for C-STORE at least once per DICOM_DEVICE_RECHECK_SECONDS of an association, so a device
revoked while its association is open is refused at its next request, or its first object after that bound (a
refused C-STORE is recorded by studies.services.ingest_refusal_record, with a security alert). Each accepted
association is one ingest batch. A C-STORE is answered with success
only once its bytes are quarantined and its IngestItem committed (`studies.services.ingest_receive`), so a
sender never deletes an object we could still lose.

Threads: pynetdicom runs each association in its own thread, and every handler of that association runs in it.
Django gives each thread its own database connection: it is kept for the whole association (not reopened per
C-STORE, as CONN_MAX_AGE=0 would have it) and closed when the association ends or after a failure.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import math
import os
import re
import socket
import ssl
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from auditlog.context import set_actor
from django.conf import settings
from django.db import DatabaseError, connection
from pydicom.dataset import Dataset
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    StoragePresentationContexts,
    VerificationPresentationContexts,
    _config,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE, DimsePrimitiveType
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # built at import time by pynetdicom
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer

from audit.context import audit_context
from audit.events import EventType
from audit.services import security_alert_raise
from devices.selectors import dicom_peer_get
from studies.models import IngestItem, StudyKey
from studies.net import qr, tls
from studies.net.peer import Peer
from studies.net.reactor import PromptAE, PromptRequestHandler
from studies.services import Rejected, ingest_receive, ingest_refusal_record, ingest_wake
from tenants import access
from tenants.jobs import messaging_warm
from tenants.scoping import tenant_scope
from tenants.selectors import tenant_for_called_ae
from tenants.services import network_require

__all__ = ["ListenerServer", "ReusePortListenerServer", "start_listener", "stop_listener"]

logger = logging.getLogger(__name__)

# C-STORE response statuses (PS3.4 Table B.2-1).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_NOT_AUTHORISED = 0x0124
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111
# The C-STORE failure status for each class of refusal the pipeline records (PS3.4 Table B.2-1, PS3.7 C.4).
CSTORE_FAILURE_STATUS: dict[str, int] = {
    IngestItem.Failure.TOO_LARGE: STATUS_OUT_OF_RESOURCES,
    IngestItem.Failure.NOT_DICOM: STATUS_CANNOT_UNDERSTAND,
    IngestItem.Failure.UNREADABLE: STATUS_CANNOT_UNDERSTAND,
    IngestItem.Failure.UNSUPPORTED_SYNTAX: STATUS_CANNOT_UNDERSTAND,
    IngestItem.Failure.INVALID: STATUS_CANNOT_UNDERSTAND,
    IngestItem.Failure.MALWARE: STATUS_CANNOT_UNDERSTAND,
    IngestItem.Failure.CONFLICT: STATUS_DUPLICATE_SOP_INSTANCE,
    IngestItem.Failure.LOST: STATUS_PROCESSING_FAILURE,
    IngestItem.Failure.INTERNAL: STATUS_PROCESSING_FAILURE,
    IngestItem.Failure.QUOTA: STATUS_OUT_OF_RESOURCES,
}

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, diagnostic.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service user, calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service user, called AE title not recognised
REJECT_PERMANENT = (0x01, 0x01, 0x01)  # rejected-permanent, service user, no reason given
REJECT_TRANSIENT = (0x02, 0x01, 0x01)  # rejected-transient, service user, no reason given

# pynetdicom's default maximum PDU (16 KiB) cuts a 512 x 512 16-bit CT slice into 32 PDUs. Offering 1 MiB (dcmtk
# then sends 128 KiB ones) took pynetdicom's own receive rate from about 157 to 250 such slices per second here.
MAXIMUM_PDU_SIZE = 1024 * 1024
MAXIMUM_ASSOCIATIONS = 32
PDU_HEADER_BYTES = 6  # PDU type, reserved, length (PS3.8 9.3.1)
STOP_GRACE_SECONDS = 10.0

# Query/retrieve (studies.net.qr): Patient Root and Study Root, FIND, GET and MOVE.
QUERY_RETRIEVE_SOP_CLASSES = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

# pynetdicom's "standard" handlers log every PDU and DIMSE message; we log what matters ourselves.
_config.LOG_HANDLER_LEVEL = "none"


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on every accepted connection.

    With Nagle's algorithm, a small write waits while an earlier one is unacknowledged, and the peer's delayed
    ACK makes that about 40 ms per object: dcmtk and Orthanc drop from about 180 to 20 instances per second.
    The sender's side matters as much (dcmtk reads TCP_NODELAY=1 from its environment; measured here with
    64 x 64 objects, storescu sends 22 per second without it, 240-250 with it); this makes sure ours never adds
    the same stall.
    """

    def __init__(self, *args: Any, request_handler: Any = None, **kwargs: Any) -> None:
        # Associations woken by their events, not by pynetdicom's 1 ms polls (studies.net.reactor).
        kwargs["request_handler"] = request_handler or PromptRequestHandler
        super().__init__(*args, **kwargs)

    # Several listener processes may share one port (`manage.py dicom_listener --processes N`): each binds its own
    # socket with SO_REUSEPORT and the kernel spreads the incoming connections over them.
    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port:
            cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = cast(socket.socket, self.socket).accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            # pynetdicom would finish the handshake here, in the one thread that accepts connections, where a peer
            # that never says hello holds up every other: it is finished in the association's thread instead.
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            admitted = False
            try:
                admitted = tls.handshake(request, _peer_address(str(client_address[0])))
            finally:
                if not admitted:  # refused, or recording the refusal failed: the socket is closed either way
                    self.shutdown_request(request)
            if not admitted:
                return
        super().process_request_thread(request, client_address)

    def shutdown(self) -> None:
        # The base class also drops the server from its AE's list of servers started by `AE.start_server`,
        # which this one (made with `AE.make_server`) is not on.
        with contextlib.suppress(ValueError):
            super().shutdown()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class ReusePortListenerServer(ListenerServer):
    """A listener that shares its port with the other processes of `dicom_listener --processes N`."""

    reuse_port = True


# The clock of the device policy's recheck window (a name of its own, so a test can move it on).
_device_clock = time.monotonic


class _Door:
    """The handlers of one listener. Admitted associations are remembered by their Association object."""

    def __init__(self) -> None:
        # Weak: an association that ends without a release or an abort (its connection just dropped) leaves no entry.
        self._peers: weakref.WeakKeyDictionary[Association, Peer] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._tally = qr.StoreTally()
        self._bounds: weakref.WeakKeyDictionary[Association, _Bounds] = weakref.WeakKeyDictionary()
        self._wakes: weakref.WeakKeyDictionary[Association, _Wake] = weakref.WeakKeyDictionary()

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_DIMSE_RECV, self._tally.on_dimse_recv),
            (evt.EVT_DATA_RECV, self.on_data_recv),
            (evt.EVT_PDU_RECV, self.on_pdu_recv),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
        ]

    # Association
    # --------------------------------------------------------------------------

    def on_requested(self, event: evt.Event) -> None:
        """Admit or reject before pynetdicom negotiates: a rejected peer never gets to send a byte of data."""
        assoc = event.assoc
        request = cast(A_ASSOCIATE, assoc.requestor.primitive)  # set before EVT_REQUESTED fires
        calling_ae = (request.calling_ae_title or "").strip()
        called_ae = (request.called_ae_title or "").strip()
        address = _peer_address(assoc.requestor.address)
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        try:
            peer = _admit(calling_ae=calling_ae, called_ae=called_ae, address=address,
                          certificate_sha256=tls.peer_certificate_sha256(sock))  # fmt: skip
        except _Refused as refused:
            _reject(assoc, refused.reject)
            return
        except Exception:
            logger.exception("DICOM association from %s could not be checked; rejected (transient)", address)
            _reject(assoc, REJECT_TRANSIENT)
            return
        # Answer with the AE title the peer called, which is the tenant's, not the listener's default.
        assoc.acceptor.ae_title = called_ae
        # Its C-STORE successes answered by a command set encoded directly (nothing of the association has been
        # sent or received through its DIMSE provider yet: negotiation comes after this event).
        assoc.dimse = _StoreResponder(assoc)
        with self._lock:
            self._peers[assoc] = peer
        certificate = tls.peer_certificate_summary(sock)
        logger.info(
            "DICOM association accepted: %s -> %s from %s%s (batch %s, listener process %d)", calling_ae, called_ae,
            address, f", TLS client certificate {certificate!r}" if certificate else "", peer.batch, os.getpid(),
        )  # fmt: skip

    def on_ended(self, event: evt.Event) -> None:
        with self._lock:
            self._peers.pop(event.assoc, None)
            self._bounds.pop(event.assoc, None)
            wake = self._wakes.pop(event.assoc, None)
        if wake is not None:
            wake.flush()  # the association's last objects: their wake-up now, not at the end of the window
        # An abort may come from `stop_listener`, in another thread: only the association's own thread holds the
        # connection to close. (An association whose socket just drops ends with no event; its thread's
        # connection goes when the thread is collected.)
        if threading.current_thread() is event.assoc:
            connection.close()

    # Bounds of one association (issue 14): every PDU, every data set, and the number of instances
    # --------------------------------------------------------------------------

    def _bounds_of(self, assoc: Association) -> _Bounds:
        with self._lock:
            return self._bounds.setdefault(assoc, _Bounds())

    def _wake_of(self, assoc: Association, peer: Peer) -> _Wake:
        with self._lock:
            wake = self._wakes.get(assoc)
            if wake is None:
                wake = self._wakes[assoc] = _Wake(tenant_id=peer.tenant.pk)
            return wake

    def on_data_recv(self, event: evt.Event) -> None:
        """A PDU longer than the maximum we offered (PS3.8 D.1: the peer must not send one) ends the association."""
        if len(event.data) > MAXIMUM_PDU_SIZE + PDU_HEADER_BYTES:
            self._abort(event.assoc, f"A PDU of {len(event.data)} bytes is over the negotiated maximum.")

    def on_pdu_recv(self, event: evt.Event) -> None:
        """Count the bytes of the data set being received (its P-DATA fragments, PS3.8 E.2): past
        DICOM_MAX_MESSAGE_BYTES the association ends there, before pynetdicom has assembled it, so the object never
        reaches `on_store` and nothing of it is written."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        bounds = self._bounds_of(event.assoc)
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value or b""
            if not value or value[0] & 0x01:  # a command fragment: not counted
                continue
            bounds.dataset_bytes += len(value) - 1
            if bounds.dataset_bytes > settings.DICOM_MAX_MESSAGE_BYTES:
                limit = settings.DICOM_MAX_MESSAGE_BYTES
                self._abort(event.assoc, f"An object still being received is over the limit of {limit} bytes.")
                return
            if value[0] & 0x02:  # the last fragment of this data set
                bounds.dataset_bytes = 0

    def _abort(self, assoc: Association, reason: str) -> None:
        bounds = self._bounds_of(assoc)
        if bounds.aborted:
            return
        bounds.aborted = True
        peer = self._peer(assoc)
        logger.warning("DICOM association from %s aborted: %s", peer.calling_ae if peer else "?", reason)
        try:
            if peer is not None:
                with tenant_scope(peer.tenant), audit_context(source_address=peer.address,
                                                              system_principal=peer.principal):  # fmt: skip
                    ingest_refusal_record(source=IngestItem.Source.CSTORE, reason=reason,
                                          failure=IngestItem.Failure.TOO_LARGE, device=peer.device, batch=peer.batch,
                                          detail={"aborted": True})  # fmt: skip
        except DatabaseError:
            # The association is ended whatever happens (below); a database that refuses the record is logged as
            # an error, never raised into pynetdicom's handler. Any other fault propagates after the abort.
            logger.exception("The refusal of an oversized DICOM message could not be recorded")
        finally:
            connection.close()
            assoc.abort(block=False)  # inside a handler: queued; the DUL sends the A-ABORT and closes

    # Services
    # --------------------------------------------------------------------------

    def on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _peer(self, assoc: Association) -> Peer | None:
        with self._lock:
            return self._peers.get(assoc)

    def on_find(self, event: evt.Event) -> Iterator[Any]:
        peer = self._peer(event.assoc)
        if peer is None:
            yield STATUS_NOT_AUTHORISED, None
            return
        yield from qr.find(event, peer)

    def on_get(self, event: evt.Event) -> Iterator[Any]:
        peer = self._peer(event.assoc)
        if peer is None:
            yield _status(STATUS_NOT_AUTHORISED, "Not admitted."), None
            return
        yield from qr.get(event, peer, self._tally)

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        peer = self._peer(event.assoc)
        if peer is None:
            yield None, None
            return
        yield from qr.move(event, peer)

    def on_store(self, event: evt.Event) -> int | Dataset:
        with self._lock:
            peer = self._peers.get(event.assoc)
        if peer is None:
            return STATUS_NOT_AUTHORISED
        bounds = self._bounds_of(event.assoc)
        if bounds.aborted:
            return _status(STATUS_OUT_OF_RESOURCES, "The association is being aborted.")
        bounds.instances += 1
        if bounds.instances > settings.DICOM_MAX_INSTANCES_PER_ASSOCIATION:
            reason = (
                f"More than {settings.DICOM_MAX_INSTANCES_PER_ASSOCIATION} objects in one association: open another."
            )
            if not bounds.instances_refused:  # once per association, not once per further object
                bounds.instances_refused = True
                with tenant_scope(peer.tenant), audit_context(source_address=peer.address,
                                                              system_principal=peer.principal):  # fmt: skip
                    ingest_refusal_record(source=IngestItem.Source.CSTORE, reason=reason,
                                          failure=IngestItem.Failure.TOO_LARGE, device=peer.device, batch=peer.batch,
                                          detail={"instances": bounds.instances})  # fmt: skip
            logger.info("C-STORE from %s refused: too many objects in one association", peer.calling_ae)
            return _status(STATUS_OUT_OF_RESOURCES, reason)
        try:
            # The dataset exactly as sent, behind a Part-10 header built from the presentation context; never
            # decoded here (the pipeline parses it under its limits, in the worker).
            data = _part10(event)
        except Exception:
            logger.exception("C-STORE from %s: the request could not be read", peer.calling_ae)
            return _status(STATUS_CANNOT_UNDERSTAND, "The request carried no readable data set.")
        try:
            with (
                tenant_scope(peer.tenant),
                audit_context(source_address=peer.address, system_principal=peer.principal),
                set_actor(None, remote_addr=peer.address),
            ):
                # The device policy (tenants.access), not only at association: decided at the first C-STORE and
                # again at the first one after DICOM_DEVICE_RECHECK_SECONDS (not per object: that was a SELECT of
                # the device's row for each). Sound because the association was admitted for this device, of this
                # tenant, and stays bound to both; only the device's status can change meanwhile, and a device
                # revoked or suspended while its association is open is refused within that bound, on the trail
                # and as an alert. A refusal is never remembered: every later object asks again.
                now = _device_clock()
                if now >= bounds.device_allowed_until:
                    if not access.device_may(peer.device, access.DEVICE_STORE):
                        reason = "The sending device is no longer approved."
                        ingest_refusal_record(
                            source=IngestItem.Source.CSTORE,
                            reason=reason,
                            failure="device",
                            device=peer.device,
                            batch=peer.batch,
                            alert="revoked_device",
                        )
                        logger.warning("C-STORE from %s refused: the device is no longer approved", peer.calling_ae)
                        return _status(STATUS_NOT_AUTHORISED, reason)
                    bounds.device_allowed_until = now + float(settings.DICOM_DEVICE_RECHECK_SECONDS)
                # Tasks in-process (tests): queued at the commit as every door does, so the verdict is known here.
                eager = bool(settings.CELERY_TASK_ALWAYS_EAGER)
                try:
                    item = ingest_receive(
                        source=IngestItem.Source.CSTORE,
                        batch=peer.batch,
                        data=data,
                        device=peer.device,
                        source_address=peer.address,
                        queue=eager,
                        study_keys=bounds.study_keys,
                    )
                except Rejected as exc:
                    ingest_refusal_record(
                        source=IngestItem.Source.CSTORE,
                        reason=exc.reason,
                        failure=exc.failure,
                        device=peer.device,
                        batch=peer.batch,
                        detail={"size": len(data)},
                    )
                    logger.info("C-STORE from %s refused at receipt: %s", peer.calling_ae, exc.reason)
                    quota = exc.failure == IngestItem.Failure.QUOTA  # out of resources: the sender may retry later
                    return _status(STATUS_OUT_OF_RESOURCES if quota else STATUS_CANNOT_UNDERSTAND, exc.reason)
                # When the pipeline has already decided (tasks run in-process), a refusal is the sender's answer.
                if eager:
                    item.refresh_from_db(fields=["state", "failure", "reason"])
                else:
                    self._wake_of(event.assoc, peer).committed(item.pk)
        except Exception:
            # Not quarantined (or not committed), or the refusal not recorded: the sender keeps the object and may
            # try again. The connection may be what broke; the next C-STORE opens a fresh one.
            logger.exception("C-STORE from %s could not be quarantined", peer.calling_ae)
            bounds.study_keys.clear()  # a study key gone meanwhile (its study deleted): looked up afresh next time
            connection.close()
            return _status(STATUS_OUT_OF_RESOURCES, "The archive could not store the object; try again later.")
        if item.state in (IngestItem.State.REJECTED, IngestItem.State.CONFLICT):
            logger.info("C-STORE from %s refused by the pipeline (%s)", peer.calling_ae, item.failure)
            return _status(CSTORE_FAILURE_STATUS.get(item.failure, STATUS_PROCESSING_FAILURE), item.reason)
        return STATUS_SUCCESS


class _Wake:
    """The worker's wake-ups for the objects of one association: the first object's at once, then at most one per
    INGEST_WAKE_SECONDS (the newest object's, at the end of the window; the task claims every item waiting with
    it), and the last one when the association ends. A C-STORE is still answered only after its item committed;
    the IngestItem rows are the truth: a wake-up lost with this process (or a flushed Redis) leaves its items
    `received`, and the sweeper queues them again."""

    def __init__(self, *, tenant_id: int) -> None:
        self.tenant_id = tenant_id
        self._lock = threading.Lock()
        self._sent_at = -math.inf
        self._pending: int | None = None
        self._timer: threading.Timer | None = None

    def committed(self, item_id: int) -> None:
        window = float(settings.INGEST_WAKE_SECONDS)
        with self._lock:
            now = time.monotonic()
            if self._timer is None and now - self._sent_at >= window:
                self._sent_at = now
                send = True
            else:
                self._pending, send = item_id, False
                if self._timer is None:
                    self._timer = threading.Timer(max(self._sent_at + window - now, 0.0), self.flush)
                    self._timer.daemon = True
                    self._timer.start()
        if send:
            self._send(item_id)

    def flush(self) -> None:
        with self._lock:
            item_id, self._pending = self._pending, None
            if self._timer is not None:
                self._timer.cancel()  # a no-op when the timer itself is what runs this
                self._timer = None
            if item_id is not None:
                self._sent_at = time.monotonic()
        if item_id is not None:
            self._send(item_id)

    def _send(self, item_id: int) -> None:
        try:
            ingest_wake(tenant_id=self.tenant_id, item_id=item_id)
        except Exception:
            # The broker is unreachable: the items stay `received` and the sweeper queues them when it is back.
            logger.exception("The ingest worker could not be woken for item %s; the sweeper will queue it", item_id)


@dataclass
class _Bounds:
    """What one association has sent so far."""

    dataset_bytes: int = 0  # of the data set being received
    instances: int = 0
    instances_refused: bool = False
    aborted: bool = False
    # Until when the device policy's yes holds for this association (see `_Door.on_store`).
    device_allowed_until: float = -math.inf
    # The study keys opened for this association's objects, by Study Instance UID: one look-up per study, not per
    # object (as STOW-RS keeps them per request). The association is of one tenant, and its objects' rows carry the
    # key row's id: a key destroyed meanwhile fails that object's INSERT, and the dict is emptied then.
    study_keys: dict[str, tuple[StudyKey, bytes]] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, reject: tuple[int, int, int]) -> None:
        super().__init__(reject)
        self.reject = reject


def _admit(*, calling_ae: str, called_ae: str, address: str, certificate_sha256: str = "") -> Peer:
    """The tenant the peer called and its approved device, which presented the TLS client certificate registered
    for it if one is (`Device.certificate_sha256`). Otherwise records the refusal (an audit event and a security
    alert, in the tenant's chain or, for an unknown called AE title, the platform's) and raises."""
    tenant = tenant_for_called_ae(ae_title=called_ae) if called_ae else None
    device = None
    if tenant is not None:
        # The tenant's trusted networks, before its devices are even looked up (refused: recorded, alerted).
        with audit_context(source_address=address, system_principal=f"dicom:{calling_ae}"):
            try:
                network_require(tenant=tenant, address=address, door="DICOM listener", principal=calling_ae)
            except access.NetworkRefused as exc:
                logger.warning("DICOM association rejected: %s -> %s from outside its trusted networks", calling_ae,
                               called_ae)  # fmt: skip
                raise _Refused(REJECT_PERMANENT) from exc
        with tenant_scope(tenant):
            device = dicom_peer_get(ae_title=calling_ae, address=address)
    pinned = device.certificate_sha256 if device is not None else ""
    if tenant is not None and device is not None and pinned and certificate_sha256 != pinned:
        _certificate_refusal_record(tenant=tenant, device=device, calling_ae=calling_ae, called_ae=called_ae,
                                    address=address, presented=certificate_sha256)  # fmt: skip
        raise _Refused(REJECT_CALLING_AE)
    if tenant is not None and device is not None:
        return Peer(tenant=tenant, device=device, calling_ae=calling_ae, called_ae=called_ae, address=address,
                    batch=uuid.uuid4())  # fmt: skip
    if tenant is None:
        summary = f"DICOM association refused: no archive answers to the called AE title {called_ae!r}."
        reject = REJECT_CALLED_AE
    else:
        summary = f"DICOM association refused: {calling_ae!r} from {address} is not an approved device of this tenant."
        reject = REJECT_CALLING_AE
    scope = tenant_scope(tenant) if tenant is not None else contextlib.nullcontext()
    with scope, audit_context(source_address=address, system_principal=f"dicom:{calling_ae}"):
        security_alert_raise(
            kind="unknown_device",
            summary=summary,
            event=EventType.ASSOCIATION_REJECTED,
            tenant=tenant,
            extra={"calling_ae": calling_ae, "called_ae": called_ae, "address": address},
        )
    logger.warning("DICOM association rejected: %s -> %s from %s", calling_ae, called_ae, address)
    raise _Refused(reject)


def _certificate_refusal_record(
    *, tenant: Any, device: Any, calling_ae: str, called_ae: str, address: str, presented: str
) -> None:
    """An approved device's AE title with another certificate than the one registered for it (one the CA signed,
    or the TLS handshake would have failed; or none, over plain DICOM): node authentication failed."""
    how = f"a certificate with SHA-256 {presented[:16]}..." if presented else "no certificate (plain DICOM)"
    summary = f"DICOM association refused: {calling_ae!r} from {address} presented {how}, not its registered one."
    with tenant_scope(tenant), audit_context(source_address=address, system_principal=f"dicom:{calling_ae}"):
        security_alert_raise(
            kind="dicom_certificate_mismatch",
            summary=summary,
            event=EventType.ASSOCIATION_REJECTED,
            tenant=tenant,
            target=device,
            subject=calling_ae,
            extra={"calling_ae": calling_ae, "called_ae": called_ae, "address": address, "layer": "certificate",
                   "presented_sha256": presented, "registered_sha256": device.certificate_sha256},
        )  # fmt: skip
    logger.warning("DICOM association rejected: %s -> %s from %s: not its registered certificate", calling_ae,
                   called_ae, address)  # fmt: skip


def _reject(assoc: Association, reject: tuple[int, int, int]) -> None:
    """Send the A-ASSOCIATE-RJ the way pynetdicom's own negotiation does: then wait until the upper layer has
    sent it and the peer has closed (or the ARTIM timer fired), so the socket is not closed under the reply."""
    connection.close()
    assoc.acse.send_reject(*reject)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _peer_address(address: str) -> str:
    """The peer's IP address as devices register it: an IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class _StoreResponder(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, except that a C-STORE response carrying only its status is encoded here: byte
    for byte the command set pynetdicom's `C_STORE_RSP` message would send (tested against it), without the pydicom
    Dataset that pynetdicom fills (every value validated on the way) and encodes twice (once for its group length):
    0.3-0.45 ms of the listener's CPU per C-STORE. Any other message, a response with more than a status (an error
    comment, an offending element), a UID that is not plain digits and dots, a peer's maximum PDU too small for it
    in one fragment, or an EVT_DIMSE_SENT handler bound (it is given pynetdicom's message object) takes pynetdicom's
    way."""

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        command = _store_response_command(primitive) if type(primitive) is C_STORE else None
        limit = self.maximum_pdu_size
        if (
            command is None
            or (limit and len(command) + PDU_HEADER_BYTES > limit)
            or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # command, last fragment
        self.dul.send_pdu(pdata)


def _command_element(element: int, value: bytes) -> bytes:
    """One element of a command set, Implicit VR Little Endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _store_response_command(rsp: C_STORE) -> bytes | None:
    """The encoded command set of C-STORE-RSP `rsp` (PS3.7 9.3.1.2: group length, Affected SOP Class UID, command
    field 8001H, Message ID Being Responded To, no data set 0101H, status, Affected SOP Instance UID: the elements of
    pynetdicom's C-STORE-RSP that are set), or None when `rsp` is not such a plain response (see `_StoreResponder`).
    The primitive's other parameters (its priority, a request's message id) are not in a response's command set."""
    answered, status = rsp.MessageIDBeingRespondedTo, rsp.Status
    if answered is None or status is None or rsp.ErrorComment is not None or rsp.OffendingElement is not None:
        return None
    uids = str(rsp.AffectedSOPClassUID or ""), str(rsp.AffectedSOPInstanceUID or "")
    if not all(_UID_TEXT.fullmatch(uid) for uid in uids):
        return None
    sop_class, sop_instance = (uid.encode("ascii") + b"\x00" * (len(uid) % 2) for uid in uids)
    elements = b"".join(
        (
            _command_element(0x0002, sop_class),
            _command_element(0x0100, b"\x01\x80"),  # C-STORE-RSP
            _command_element(0x0120, struct.pack("<H", answered)),
            _command_element(0x0800, b"\x01\x01"),  # no data set
            _command_element(0x0900, struct.pack("<H", status)),
            _command_element(0x1000, sop_instance),
        )
    )
    return _command_element(0x0000, struct.pack("<I", len(elements))) + elements


_PART10_PREAMBLE = b"\x00" * 128 + b"DICM"
_FILE_META_VERSION = b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"  # (0002,0001) OB, 2 bytes: 00 01
_UID_TEXT = re.compile(r"[0-9.]{1,64}")


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One element of group 0002 in Explicit VR Little Endian (a short VR: UI, SH, UL)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _part10(event: evt.Event) -> bytes:
    """A C-STORE's data set exactly as received, behind the Part-10 preamble and File Meta Information pynetdicom's
    `Event.encoded_dataset(include_meta=True)` writes (the same bytes: tested), encoded here directly instead of
    through a pydicom FileMetaDataset and its writer (about a tenth of the listener's Python time per CT), and
    joined from the received buffer without copying it first. A UID that is not plain digits and dots, or longer
    than a UID may be, takes pynetdicom's way, so that its encoding and warnings stay pydicom's."""
    request = cast(C_STORE, event.request)  # EVT_C_STORE's request
    uids = (str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or ""),
            str(event.context.transfer_syntax or ""))  # fmt: skip
    if not all(_UID_TEXT.fullmatch(uid) for uid in uids):
        return event.encoded_dataset(include_meta=True)
    sop_class, sop_instance, syntax = (uid.encode("ascii") for uid in uids)
    elements = b"".join(
        (
            _FILE_META_VERSION,
            _meta_element(0x0002, b"UI", sop_class + b"\x00" * (len(sop_class) % 2)),
            _meta_element(0x0003, b"UI", sop_instance + b"\x00" * (len(sop_instance) % 2)),
            _meta_element(0x0010, b"UI", syntax + b"\x00" * (len(syntax) % 2)),
            _IMPLEMENTATION_ELEMENTS,
        )
    )
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(elements)))
    # A view of pynetdicom's buffer, released before anything may write to it again.
    with cast(BytesIO, request.DataSet).getbuffer() as received:
        return b"".join((_PART10_PREAMBLE, group_length, elements, received))


def _implementation_elements() -> bytes:
    uid = str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii")
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    return _meta_element(0x0012, b"UI", uid + b"\x00" * (len(uid) % 2)) + _meta_element(
        0x0013, b"SH", version + b" " * (len(version) % 2)
    )


_IMPLEMENTATION_ELEMENTS = _implementation_elements()


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


def _application_entity() -> PromptAE:
    ae = PromptAE(ae_title=settings.DICOM_AE_TITLE)
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    ae.maximum_associations = MAXIMUM_ASSOCIATIONS
    # Admission is decided per tenant in `on_requested`, not by pynetdicom's single-title checks.
    ae.require_called_aet = False
    ae.require_calling_aet = []
    for context in VerificationPresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax))
    # pynetdicom's storage contexts accept only the uncompressed transfer syntaxes unless told otherwise; the
    # pipeline stores the bytes as sent, so JPEG, JPEG-LS, JPEG 2000, RLE and the rest are all welcome.
    # The roles: a C-GET requestor proposes to be the storage SCP on the association (PS3.4 C.4.3.1), which we
    # accept; a sender proposing nothing stays the SCU, as before.
    for context in StoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
        ae.add_supported_context(sop_class)
    return ae


class _Context(PresentationContext):
    """A supported presentation context of the listener whose deep copy shares its UIDs. pynetdicom deep-copies the
    server's supported contexts for every association it accepts (each association negotiates on its own copy);
    ours are 127 storage and query/retrieve classes with 5,428 transfer syntaxes in all, every one a pydicom UID
    that `deepcopy` rebuilds through its validating constructor: about 27 ms of CPU per association. The copy
    here is a new context with new lists of the same UIDs (immutable strings) and the same flags: what
    negotiation reads and may change (its result and roles, on the copy) is still its own."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Context:
        copied = _Context.__new__(_Context)
        copied.__dict__.update({k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()})
        return copied

    @classmethod
    def of(cls, context: PresentationContext) -> _Context:
        made = cls.__new__(cls)
        made.__dict__.update(copy.deepcopy(vars(context)))
        return made


def start_listener(
    host: str | None = None, port: int | None = None, *, block: bool = False, reuse_port: bool = False
) -> ListenerServer:
    """Listen on `host`:`port` (settings DICOM_HOST / DICOM_PORT by default; port 0 picks a free one), in DICOM
    TLS when DICOM_TLS_CERT is set (studies.net.tls).

    With `reuse_port`, the port may be shared with other processes listening on it the same way (SO_REUSEPORT).
    Non-blocking (the default) serves from a background thread and returns the running server. Blocking serves
    in this thread until KeyboardInterrupt, then stops and returns the stopped server.
    """
    host = settings.DICOM_HOST if host is None else host
    port = settings.DICOM_PORT if port is None else port
    messaging_warm()  # Celery ready to send before the first association (tenants.jobs)
    ae = _application_entity()
    door = _Door()
    server = cast(
        ListenerServer,
        ae.make_server(
            (host, port),
            contexts=[_Context.of(context) for context in ae.supported_contexts],
            evt_handlers=door.handlers(),
            server_class=ReusePortListenerServer if reuse_port else ListenerServer,
            ssl_context=tls.listener_tls_context(),
        ),
    )
    if block:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        stop_listener(server)
        return server
    thread = threading.Thread(target=server.serve_forever, name=f"DicomListener@{server.port}", daemon=True)
    thread.start()
    return server


def stop_listener(server: ListenerServer, *, grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop accepting, give open associations `grace` seconds to finish, then abort the rest. An object not yet
    answered is not lost: its sender was never told it was stored."""
    server.shutdown()
    deadline = time.monotonic() + grace
    for assoc in server.active_associations:
        assoc.join(timeout=max(deadline - time.monotonic(), 0.1))
    for assoc in server.active_associations:
        assoc.abort()
