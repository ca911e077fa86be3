"""The listener's wake-ups of the ingest worker (studies.net.scp._Wake): one per short window of an association,
not one per object, and none lost at the end of an association. No database: the items are only numbers here."""

from __future__ import annotations

import threading

import pytest
from django.test import override_settings

from studies.net import scp


class Woken(list):
    """The item ids the worker was woken for, in order; `done` is set at each."""

    def __init__(self) -> None:
        super().__init__()
        self.done = threading.Event()


@pytest.fixture
def woken(monkeypatch) -> Woken:
    sent = Woken()

    def wake(*, tenant_id: int, item_id: int) -> None:
        assert tenant_id == 7
        sent.append(item_id)
        sent.done.set()

    monkeypatch.setattr(scp, "ingest_wake", wake)
    return sent


@override_settings(INGEST_WAKE_SECONDS=3600)
def test_the_first_object_wakes_the_worker_at_once_the_rest_of_the_window_once_at_its_end(woken):
    wake = scp._Wake(tenant_id=7)
    wake.committed(1)
    assert woken == [1]
    for item_id in (2, 3, 4):
        wake.committed(item_id)
    assert woken == [1]  # within the window: held back
    wake.flush()  # the association ends (or the window does): the newest item's wake-up, which claims 2 to 4 too
    assert woken == [1, 4]
    wake.flush()
    assert woken == [1, 4]  # nothing pending: nothing sent


@override_settings(INGEST_WAKE_SECONDS=0.05)
def test_the_held_back_wake_up_leaves_when_the_window_ends(woken):
    wake = scp._Wake(tenant_id=7)
    wake.committed(1)
    woken.done.clear()
    wake.committed(2)
    assert woken.done.wait(timeout=30)  # the window's timer sent it, no flush needed
    assert woken == [1, 2]


def test_a_broker_that_refuses_the_wake_up_does_not_fail_the_store(monkeypatch):
    def refuse(**kwargs) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(scp, "ingest_wake", refuse)
    scp._Wake(tenant_id=7).committed(1)  # logged; the item stays received for the sweeper
