"""The signal a STOW-RS receipt gives a worker that waits to gather its next batch (studies.services.ingest
`_received_signal`, `_gather_claim`): the wait ends when the receipt commits, not INGEST_GATHER_SECONDS later; the
signal is a hint only (the Celery message each receipt queues, and the sweeper, are what reach a worker), so a lost
or stale one costs a wait or an empty claim, never an item. Real services, database and Redis."""

from __future__ import annotations

import socket
import time
import uuid

import pytest
from django.core.cache import cache
from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent
from studies import services
from studies.dicom.synthetic import make_study
from studies.models import IngestItem
from studies.services import ingest
from tenants.scoping import tenant_scope
from tests.studies.services.test_ingest import messages_lost_by_the_broker

pytestmark = pytest.mark.django_db(transaction=True)


def _client():
    return cache._cache.get_client(write=True)


def _signals(tenant) -> int:
    return int(_client().llen(ingest._received_key(tenant.pk)))


def _stow(*datas: bytes) -> list[IngestItem]:
    """One STOW-RS request's receipt (its processing message lost: the test runs the worker's task itself)."""
    quarantined = [(services.ingest_quarantine(data=data), f"STOW-RS part {n}") for n, data in enumerate(datas, 1)]
    return services.ingest_receive_many(source=IngestItem.Source.STOWRS, batch=uuid.uuid4(), quarantined=quarantined)


@override_settings(INGEST_GATHER_SECONDS=30, INGEST_BATCH_ROUNDS=2)
def test_a_receipt_ends_the_wait_of_a_worker_gathering_its_next_batch(tenant_a, monkeypatch):
    """The worker's task, after the batch of a first request, waits to gather its next batch; the next request's
    receipt, committed during that wait, ends it at once (the old wait slept its 30 seconds), and is one batch."""
    files = make_study(series=1, instances_per_series=3)
    real_wait = ingest._received_wait
    waits: list[float] = []

    def next_request_arrives(*, tenant_id: int, timeout: float) -> bool:
        waits.append(timeout)
        _client().delete(ingest._received_key(tenant_id))  # the first request's own signal: not what wakes it
        with messages_lost_by_the_broker():
            _stow(files[1], files[2])
        return real_wait(tenant_id=tenant_id, timeout=timeout)

    with tenant_scope(tenant_a):
        with messages_lost_by_the_broker():
            [first] = _stow(files[0])
        monkeypatch.setattr(ingest, "_received_wait", next_request_arrives)
        started = time.monotonic()
        assert services.ingest_process(item_id=first.pk).state == IngestItem.State.STORED
        assert time.monotonic() - started < 10
        assert len(waits) == 1  # one wait, ended by the signal, not by its timeout
        assert waits[0] > 20
        assert set(IngestItem.objects.values_list("state", flat=True)) == {IngestItem.State.STORED}
        counts = sorted(e.extra["count"] for e in AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED))
        assert counts == [1, 2]  # each request one batch
        assert _signals(tenant_a) == 0  # the wait took the signal


@override_settings(INGEST_GATHER_SECONDS=0.3)
def test_a_signal_whose_items_are_taken_lets_the_wait_run_on(tenant_a):
    """A stale signal (its items already processed, by this worker or another) finds nothing to claim: the wait
    goes on to the end of the gathering time and claims what came meanwhile (nothing here)."""
    with tenant_scope(tenant_a):
        with messages_lost_by_the_broker():
            [item] = _stow(make_study(series=1, instances_per_series=1)[0])
        assert _signals(tenant_a) == 1
        services.ingest_process(item_id=item.pk)  # the first batch at once; then the gathering wait
        assert _signals(tenant_a) == 0
        started = time.monotonic()
        assert ingest._gather_claim(tenant_id=tenant_a.pk, seconds=0.3) == []
        assert time.monotonic() - started >= 0.29


def test_one_signal_is_kept_and_it_expires(tenant_a):
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        for data in make_study(series=1, instances_per_series=2):
            _stow(data)
    assert _signals(tenant_a) == 1  # a second receipt before a worker took the first needs no second wake-up
    assert _client().pttl(ingest._received_key(tenant_a.pk)) > 0


def test_doors_that_record_objects_one_by_one_give_no_signal(tenant_a):
    """The listener and the browser upload make their batches by the gathering wait, as before."""
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        services.ingest_receive(
            source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_study(series=1)[0], queue=False
        )
    assert _signals(tenant_a) == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_redis_costs_the_signal_not_the_receipt(tenant_a):
    """Redis down: the receipt's push is lost (logged, not raised: the items are recorded, their message queued)
    and a gathering wait falls back to sleeping its time."""
    location = f"redis://127.0.0.1:{_closed_port()}/0"
    with (
        override_settings(
            CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location}}
        ),
        tenant_scope(tenant_a),
    ):
        with messages_lost_by_the_broker():
            [item] = _stow(make_study(series=1, instances_per_series=1)[0])
        started = time.monotonic()
        assert ingest._received_wait(tenant_id=tenant_a.pk, timeout=0.05) is False
        assert time.monotonic() - started >= 0.04
        assert IngestItem.objects.get(pk=item.pk).state == IngestItem.State.RECEIVED
