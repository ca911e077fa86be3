"""The listener's associations are woken by their events, not by pynetdicom's 1 ms polls (studies.net.reactor):
the DUL's idle wait ends when the peer sends or a PDU is queued to send, the association's when a decoded message is
queued; the association's pause point no longer lets its reactor take a `send_*` method's response; each loop is
pynetdicom's otherwise, and the source it was copied from is pinned here."""

from __future__ import annotations

import hashlib
import inspect
import threading
import time

import pytest
from pynetdicom import AE
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler

from studies.net import reactor
from studies.net.reactor import PromptAE, PromptAssociation, PromptDUL

MODE_ACCEPTOR = "acceptor"
MODE_REQUESTOR = "requestor"

# pynetdicom 3.0.4's loops, handler and `associate` that studies.net.reactor copies with only their waits, the
# association's pause point and the association class replaced. A new pynetdicom that changes any of them fails here:
# compare the copies with the new source, then record its digest.
DUL_LOOP = "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803"  # pragma: allowlist secret
ASSOCIATION_LOOP = "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"  # pragma: allowlist secret
HANDLER = "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e"  # pragma: allowlist secret
ASSOCIATE = "dbc8cf47090386b2068817f6e65e39ca2c0d5b8fd80f6b9b7a322d37b85b2985"  # pragma: allowlist secret
PINNED = {
    DULServiceProvider.run_reactor: DUL_LOOP,
    Association._run_reactor: ASSOCIATION_LOOP,
    RequestHandler._create_association: HANDLER,
    ApplicationEntity.associate: ASSOCIATE,
}


@pytest.mark.parametrize("function", list(PINNED), ids=lambda f: f.__qualname__)
def test_the_copied_pynetdicom_source_is_the_one_pinned(function):
    assert hashlib.sha256(inspect.getsource(function).encode()).hexdigest() == PINNED[function]


def _in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_the_dul_idle_wait_ends_when_a_pdu_is_queued_to_send(monkeypatch):
    monkeypatch.setattr(reactor, "DUL_WAIT_SECONDS", 60.0)
    dul = PromptDUL(Association(AE(), MODE_ACCEPTOR))
    waiting = _in_thread(dul._idle)
    time.sleep(0.2)
    assert waiting.is_alive()  # a wait of up to 60 s, with nothing to wake it yet

    dul.send_pdu(P_DATA())

    waiting.join(timeout=10)
    assert not waiting.is_alive()
    assert dul.to_provider_queue.qsize() == 1  # queued as pynetdicom queues it
    with pytest.raises(BlockingIOError):  # the wake-up byte was read: the next idle pass waits again
        dul._nudge_r.recv(1)


def test_the_association_wait_ends_when_a_message_is_decoded(monkeypatch):
    monkeypatch.setattr(reactor, "REACTOR_WAIT_SECONDS", 60.0)
    assoc = PromptAssociation(AE(), MODE_ACCEPTOR)
    assert isinstance(assoc.dul, PromptDUL)
    waiting = _in_thread(assoc._wait_for_message)
    time.sleep(0.2)
    assert waiting.is_alive()

    assoc.dimse.msg_queue.put((1, object()))

    waiting.join(timeout=10)
    assert not waiting.is_alive()
    assert assoc.dimse.msg_queue.qsize() == 1  # left for the reactor's pass to take, as before


def test_timeouts_reach_the_prompt_duls_timers():
    ae = AE()
    ae.acse_timeout, ae.network_timeout = 17, 23
    assoc = PromptAssociation(ae, MODE_ACCEPTOR)
    assert assoc.dul.artim_timer.timeout == 17
    assert assoc.dul._idle_timer.timeout == 23


def test_echoes_are_answered_without_waiting_for_a_poll(monkeypatch, listener, demo_ct):
    """With each loop's idle wait made one second long, an association still answers ten C-ECHOs at once: every step
    of an echo is woken by its event (with pynetdicom's polls each echo would wait out about three such waits)."""
    monkeypatch.setattr(reactor, "DUL_WAIT_SECONDS", 1.0)
    monkeypatch.setattr(reactor, "REACTOR_WAIT_SECONDS", 1.0)
    ae = AE(ae_title="DEMO_CT")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NORTH")
    assert assoc.is_established
    try:
        (served,) = listener.active_associations
        assert type(served) is PromptAssociation
        assert type(served.dul) is PromptDUL
        started = time.monotonic()
        statuses = [int(assoc.send_c_echo().Status) for _ in range(10)]
        elapsed = time.monotonic() - started
    finally:
        assoc.release()
    assert statuses == [0x0000] * 10
    assert elapsed < 5.0, f"ten echoes took {elapsed:.1f} s: a loop waited out its idle wait"
    served.join(timeout=10)
    assert served.dul._nudge_r.fileno() == -1  # closed with its reactor
    assert served.dul._nudge_w.fileno() == -1


class _SendArrivesAfterTheWait(threading.Event):
    """The reactor's checkpoint, with a `send_*` method arriving at the worst moment: just after the reactor's wait
    returned. As pynetdicom's `send_c_store` does, it clears the checkpoint and looks at `_is_paused`; then its
    response arrives at once (a quick peer)."""

    def __init__(self, assoc: Association, response: object) -> None:
        super().__init__()
        self.set()
        self.assoc = assoc
        self.response = response
        self.paused_seen: list[bool] = []

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        if not self.paused_seen:
            self.clear()
            self.paused_seen.append(self.assoc._is_paused)
            self.assoc.dimse.msg_queue.put((1, self.response))
        return woke


def _race(assoc: Association) -> tuple[_SendArrivesAfterTheWait, object, threading.Thread]:
    """Runs the association's reactor pass against that checkpoint; returns it, the response, and the reactor's
    thread. The DUL is never started, so the reactor ends after the pass in which it gets past the checkpoint."""
    response = C_STORE()  # a C-STORE response as the DIMSE provider queues it
    response.MessageIDBeingRespondedTo = 1
    response.Status = 0x0000
    checkpoint = _SendArrivesAfterTheWait(assoc, response)
    assoc._reactor_checkpoint = checkpoint
    return checkpoint, response, _in_thread(assoc._run_reactor)


def test_pynetdicoms_pause_point_lets_its_reactor_take_a_quick_response(caplog):
    """The defect mended: with pynetdicom's reactor, the `send_*` sees `_is_paused` still True, goes on, and the
    reactor takes its response off the queue and drops it; the `send_*` would wait out its DIMSE timeout."""
    assoc = Association(AE(), MODE_REQUESTOR)
    checkpoint, _response, thread = _race(assoc)
    thread.join(timeout=10)
    assert checkpoint.paused_seen == [True]
    assert assoc.dimse.msg_queue.empty()
    assert "Received unexpected C-STORE service message" in caplog.text


def test_the_reactor_waits_again_when_a_send_clears_the_checkpoint_after_its_wait(caplog):
    assoc = PromptAssociation(AE(), MODE_REQUESTOR)
    checkpoint, response, thread = _race(assoc)
    # The `send_*` saw the same stale True and went on; its response is still on the queue for it to take.
    assert assoc.dimse.msg_queue.get(timeout=10) == (1, response)
    assert checkpoint.paused_seen == [True]
    time.sleep(0.2)
    assert thread.is_alive()  # back at the checkpoint, until the `send_*` sets it again
    assert assoc._is_paused
    checkpoint.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert "Received unexpected" not in caplog.text


def test_the_listeners_requested_associations_are_prompt(listener):
    """C-MOVE's sub-operations are requested through the listener's application entity."""
    assert type(listener.ae) is PromptAE
    assert inspect.getsource(PromptAE.associate).count("PromptAssociation(self, MODE_REQUESTOR)") == 1
