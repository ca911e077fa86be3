"""The listener's associations woken by their events instead of by a 1 ms poll.

pynetdicom 3.0 runs two loops per association, and both poll. The DUL thread, when a pass found nothing to do,
sleeps `_run_loop_delay` (1 ms) before it looks at the socket and at the queue of PDUs to send again; the
association's thread sleeps 1 ms at the top of every pass before it looks for a decoded DIMSE message. A C-STORE
meets three such sleeps on its way: its PDUs wait for the DUL to wake, its decoded message for the association's
thread, and its response for the DUL again; about 0.5 ms each on average, 1.5 ms of an object that the listener
otherwise handles in about 5 ms of CPU (pynetdicom's own comment on `_run_loop_delay` names making it event based as
work to do).

Here each sleep is the same bounded wait, ended early by the event that loop is waiting for:
- `PromptDUL` waits in `select` on the association's socket and on a socket pair that `send_pdu` writes a byte to,
  for at most `_run_loop_delay`;
- `PromptAssociation` waits on its DIMSE message queue's condition (`queue.Queue.not_empty`, notified by every put),
  for at most 1 ms.
Nothing else of either loop changes: each pass after the wait does exactly what pynetdicom's pass does, in the same
order, so a wait that ends early can only make a pass come sooner, never skip one; with nothing arriving both loops
pass every 1 ms as before (the kill flags, the ARTIM and idle timers, a release or an abort are seen as promptly as
pynetdicom sees them). The loops are pynetdicom's (MIT licence), copied with only the wait replaced;
tests/studies/net/test_reactor.py pins the source they were copied from, so an upgrade of pynetdicom that changes
them fails that test until they are compared again.

The association's pause point is mended too (`PromptAssociation._wait_at_checkpoint`): pynetdicom's lets a
`send_*` method and the reactor both take the response off the DIMSE queue, and when the reactor wins, the `send_*`
waits out its DIMSE timeout and aborts the association. This struck the C-STOREs sent to the listener by the tests'
pynetdicom client under load (pynetdicom issue 435 reports it); C-MOVE's sub-operations meet the same race.

The listener's accepted associations use these (`PromptRequestHandler`, the handler of
`studies.net.scp.ListenerServer`), and so do the associations it requests (C-MOVE's sub-operations, through its
application entity, a `PromptAE`).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import time
from copy import deepcopy
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import AE, evt
from pynetdicom._globals import DEFAULT_MAX_LENGTH, MODE_ACCEPTOR, MODE_REQUESTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

if TYPE_CHECKING:
    from ssl import SSLContext

    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.events import EventHandlerType
    from pynetdicom.pdu_primitives import _UI
    from pynetdicom.presentation import PresentationContext


__all__ = ["PromptAE", "PromptAssociation", "PromptDUL", "PromptRequestHandler"]

# pynetdicom's loggers, so that what these loops log reads as it did.
_DUL_LOGGER = logging.getLogger("pynetdicom.dul")
_ASSOCIATION_LOGGER = logging.getLogger("pynetdicom.association")

# The longest wait of an idle pass: the DUL's (pynetdicom's `_run_loop_delay`) and the association thread's
# (pynetdicom's fixed sleep). Read when each association starts.
DUL_WAIT_SECONDS = 0.001
REACTOR_WAIT_SECONDS = 0.001


class PromptDUL(DULServiceProvider):
    """pynetdicom's DUL service provider whose idle wait ends as soon as the peer sends or a PDU is queued to send."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._run_loop_delay = DUL_WAIT_SECONDS
        # Written by `send_pdu`, read by the idle wait. Socket objects, not raw descriptors: once closed, a late
        # write fails on the object (its fileno is -1) and can never land in a descriptor reused meanwhile.
        self._nudge_r, self._nudge_w = socket.socketpair()
        self._nudge_r.setblocking(False)
        self._nudge_w.setblocking(False)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        try:
            self._nudge_w.send(b"\x00")
        except (BlockingIOError, OSError):
            pass  # full: a wake-up is already waiting to be read; closed: the reactor has ended

    def _idle(self) -> None:
        """pynetdicom's `time.sleep(self._run_loop_delay)`, ended early by data from the peer or a PDU to send."""
        sock = self.socket.socket if self.socket is not None else None
        try:
            waited: list[Any] = [self._nudge_r] if sock is None or sock.fileno() < 0 else [self._nudge_r, sock]
            ready, _, _ = select.select(waited, [], [], self._run_loop_delay)
        except (OSError, ValueError):  # the socket closed under us: wait as pynetdicom does
            time.sleep(self._run_loop_delay)
            return
        if self._nudge_r in ready:
            try:
                while self._nudge_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's `DULServiceProvider.run_reactor`, its sleep replaced by `_idle`."""
        try:
            self._run_reactor()
        finally:
            self._nudge_r.close()
            self._nudge_w.close()

    def _run_reactor(self) -> None:
        # Main DUL loop
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                # When single-stepping the reactor, sleep between events so that
                # test code has time to run.
                sleep = True

            if sleep:
                # If there were no events to process on the previous loop, wait before checking again (for at
                # most `_run_loop_delay`, less when the peer sends or a PDU is queued), otherwise check immediately.
                self._idle()

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            # Check the connection for incoming data
            try:
                # We can either encode and send a primitive **OR**
                #   receive and decode a PDU per loop of the reactor
                if self._process_recv_primitive():  # encode (sent by state machine)
                    pass
                elif self._is_transport_event():  # receive and decode PDU
                    self._idle_timer.restart()
            except Exception as exc:
                _DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                _DUL_LOGGER.exception(exc)
                # Bypass the state machine and send an A-ABORT
                #   we do it this way because an exception here will mess up
                #   the state machine and we can't guarantee it'll get sent
                #   otherwise
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                # Hard shutdown of the Association and DUL reactors
                self.assoc._kill = True
                self._kill_thread = True
                return

            # Check the event queue to see if there is anything to do
            try:
                event = self.event_queue.get(block=False)
            # If the queue is empty, return to the start of the loop
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class PromptAssociation(Association):
    """pynetdicom's Association whose acceptor reactor waits for a decoded DIMSE message instead of sleeping."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        super().__init__(ae, mode)
        # Before anything uses it (no socket yet, no thread started); the timeouts set by pynetdicom's __init__ are
        # set again so that they reach this DUL's timers.
        self.dul = PromptDUL(self)
        self._reactor_wait = REACTOR_WAIT_SECONDS
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def _wait_for_message(self) -> None:
        """pynetdicom's `time.sleep(0.001)`, ended early when the DUL puts a decoded message on the DIMSE queue."""
        messages = self.dimse.msg_queue
        with messages.not_empty:
            if not messages.queue:
                messages.not_empty.wait(self._reactor_wait)

    def _wait_at_checkpoint(self) -> None:
        """pynetdicom's pause point (`_is_paused = True; _reactor_checkpoint.wait(); _is_paused = False`), without
        its race.

        A `send_*` method clears the checkpoint, waits until `_is_paused` is True, sends its request and takes the
        response off the DIMSE queue. pynetdicom's pause point leaves `_is_paused` True from before its wait until
        after it: a `send_*` that clears the checkpoint just after the wait returned sees that stale True and goes
        on, and the reactor's pass then takes the next message off the queue. When the response is quick, that
        message is the response the `send_*` is waiting for: the reactor logs "Received unexpected C-STORE service
        message" and drops it, and the `send_*` waits out its DIMSE timeout and aborts the association.

        Here, having marked itself running, the reactor looks at the checkpoint once more and waits again if it was
        cleared meanwhile. A `send_*` that saw `_is_paused` True cleared the checkpoint before that look (the
        interpreter runs these reads and writes one at a time, in one order), so the reactor is back at its wait
        before it touches the queue; a `send_*` that cleared it later sees False and waits for the next pause.
        """
        checkpoint = self._reactor_checkpoint
        while True:
            self._is_paused = True
            checkpoint.wait()
            self._is_paused = False
            if checkpoint.is_set():
                return

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's `Association._run_reactor`, its sleep replaced by `_wait_for_message` and its pause
        point by `_wait_at_checkpoint`."""
        self._is_paused = False
        while not self._kill:
            self._wait_for_message()

            # A race condition may occur if the Acceptor uses the send_*()
            #   methods as the received DIMSE message may be taken off the
            #   queue before the send_*() method gets to it, so we allow
            #   the reactor to be paused
            # We also need to be careful that the reactor actually stops
            #   before attempting DIMSE or ACSE messaging
            # Will block until `_reactor_checkpoint` is set()
            self._wait_at_checkpoint()

            # Check with the DIMSE provider to see if a completely decoded
            #   message is available
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                # Send A-RELEASE response
                self.acse.send_release(is_response=True)
                _ASSOCIATION_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _ASSOCIATION_LOGGER.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            # Check if the DULServiceProvider thread is still running
            #   DUL.is_alive() is inherited from threading.thread
            if not self.dul.is_alive():
                self.kill()
                return

            # Check if network_timeout has expired
            if self.dul.idle_timer_expired():
                _ASSOCIATION_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class PromptRequestHandler(RequestHandler):
    """pynetdicom's request handler, making a `PromptAssociation` for each accepted connection."""

    def _create_association(self) -> Association:
        """pynetdicom 3.0.4's `RequestHandler._create_association` with `PromptAssociation` for `Association`."""
        assoc = PromptAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server

        # Set the thread name
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")  # noqa: DTZ005  # pynetdicom's name, local time
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = AssociationSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        # Association Acceptor object -> local AE
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)

        # Association Requestor object -> remote AE
        assoc.requestor.address_info = cast(AddressInformation, self.remote)

        # Bind events to handlers
        for event in self.server._handlers:
            # Intervention events
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])

        return assoc


class PromptAE(AE):
    """pynetdicom's application entity whose requested associations are `PromptAssociation`s: the listener's, so
    that C-MOVE's sub-operations (pynetdicom's Move service calls `self.ae.associate`) wait on events and are free
    of the pause race (`PromptAssociation._wait_at_checkpoint`)."""

    def associate(
        self,
        addr: str | tuple[str, int, int],
        port: int,
        contexts: list[PresentationContext] | None = None,
        ae_title: str = "ANY-SCP",
        max_pdu: int = DEFAULT_MAX_LENGTH,
        ext_neg: list[_UI] | None = None,
        bind_address: tuple[str, int] | tuple[str, int, int, int] | None = None,
        tls_args: tuple[SSLContext, str] | None = None,
        evt_handlers: list[EventHandlerType] | None = None,
    ) -> Association:
        """pynetdicom 3.0.4's `ApplicationEntity.associate` with `PromptAssociation` for `Association`."""
        if not isinstance(addr, (str, tuple)):
            raise TypeError("'addr' must be str or tuple[str, int, int]")

        if isinstance(addr, tuple) and (
            not isinstance(addr[0], str) or not isinstance(addr[1], int) or not isinstance(addr[2], int)
        ):
            raise TypeError("'addr' must be str or tuple[str, int, int]")

        if not isinstance(port, int):
            raise TypeError("'port' must be int")

        remote_address = AddressInformation.from_addr_port(addr, port)

        if bind_address is None:
            bind_address = ("", 0)
            if remote_address.address_family == socket.AF_INET6:
                bind_address = ("::0", 0)

        if not isinstance(bind_address, (tuple, list)):
            raise TypeError("'bind_address' must be tuple[str, int] or tuple[str, int, int, int]")

        if (
            len(bind_address) not in (2, 4)
            or not isinstance(bind_address[0], str)
            or not isinstance(bind_address[1], int)
        ):
            raise TypeError("'bind_address' must be tuple[str, int] or tuple[str, int, int, int]")

        if len(bind_address) == 4 and (not isinstance(bind_address[2], int) or not isinstance(bind_address[3], int)):
            raise TypeError("'bind_address' must be tuple[str, int] or tuple[str, int, int, int]")

        local_address = AddressInformation.from_tuple(bind_address)

        # Association
        assoc = PromptAssociation(self, MODE_REQUESTOR)

        # Set the thread name
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")  # noqa: DTZ005  # pynetdicom's name, local time
        assoc.name = f"RequestorThread@{timestamp}"

        # Setup the association's communication socket
        sock = self._create_socket(assoc, local_address, tls_args)
        assoc.set_socket(sock)

        # Association Acceptor object -> remote AE
        # `ae_title` validation is performed by the ServiceUser
        assoc.acceptor.ae_title = ae_title
        assoc.acceptor.address_info = remote_address

        # Association Requestor object -> local AE
        # Nominal address info - will get updated by AssociationSocket.connect()
        assoc.requestor.address_info = local_address
        assoc.requestor.ae_title = self.ae_title
        assoc.requestor.maximum_length = max_pdu
        assoc.requestor.implementation_class_uid = self.implementation_class_uid
        assoc.requestor.implementation_version_name = self.implementation_version_name
        for item in ext_neg or []:
            assoc.requestor.add_negotiation_item(item)

        # Requestor's presentation contexts
        contexts = contexts or self.requested_contexts
        self._validate_requested_contexts(contexts)

        # PS3.8 Table 9.11, an A-ASSOCIATE-RQ must contain one or more
        #   Presentation Context items
        if not contexts:
            raise RuntimeError("At least one requested presentation context is required before associating with a peer")

        # Set using a copy of the original to play nicely
        contexts = deepcopy(contexts)

        # Add the context IDs
        for ii, context in enumerate(contexts):
            context.context_id = 2 * ii + 1

        assoc.requestor.requested_contexts = contexts

        # Bind events to the handlers
        evt_handlers = evt_handlers or []
        for evt_hh_args in evt_handlers:
            assoc.bind(*evt_hh_args)

        # Send an A-ASSOCIATE request to the peer and start negotiation
        assoc.request()

        # If the result of the negotiation was acceptance then start up
        #   the Association thread
        if assoc.is_established:
            assoc.start()

        return assoc
