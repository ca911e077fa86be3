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

Only the listener's accepted associations use these (`PromptRequestHandler`, the handler of
`studies.net.scp.ListenerServer`); the associations Enclave requests (C-MOVE's sub-operations, studies.net.qr) are
pynetdicom's own.
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

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity

__all__ = ["PromptAssociation", "PromptDUL", "PromptRequestHandler"]

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

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's `Association._run_reactor`, its sleep replaced by `_wait_for_message`."""
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
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

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
