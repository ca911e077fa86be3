"""bench/ingest.py's wait between benchmark phases, against the real Redis: it ends only once no message is queued
(at any priority) and none is taken but unacknowledged, and it times out with what was still waiting."""

import threading
import time
import uuid

import pytest
import redis
from django.conf import settings

from bench.ingest import KOMBU_PRIORITY_SEPARATOR, celery_backlog, celery_drained, celery_queues

SETTLE = 0.3


@pytest.fixture
def broker():
    """A Redis client, a queue name and an unacknowledged-messages hash that no worker or other test uses."""
    url = settings.REDIS_URL
    client = redis.Redis.from_url(url)
    queue, unacked = f"bench-drain-{uuid.uuid4().hex}", f"bench-unacked-{uuid.uuid4().hex}"
    yield url, client, queue, unacked
    client.delete(queue, f"{queue}{KOMBU_PRIORITY_SEPARATOR}6", unacked)
    client.close()


def wait(url, queue, unacked, timeout=10.0):
    return celery_drained(url, [queue], timeout=timeout, unacked_key=unacked, settle=SETTLE, poll=0.02)


def test_nothing_waiting_returns_after_the_settle_time(broker):
    url, _, queue, unacked = broker

    result = wait(url, queue, unacked)

    assert result["drained"] is True
    assert result["waiting_at_start"] == {}
    assert SETTLE <= result["seconds"] < SETTLE + 1.0


def test_it_waits_for_the_queue_and_then_for_the_unacknowledged_message(broker):
    url, client, queue, unacked = broker
    client.lpush(f"{queue}{KOMBU_PRIORITY_SEPARATOR}6", b"message")  # a priority step's list counts as the queue

    def worker():  # takes the message (kombu: off the list, into the hash), then acknowledges it
        time.sleep(0.5)
        client.delete(f"{queue}{KOMBU_PRIORITY_SEPARATOR}6")
        client.hset(unacked, "tag", b"message")
        time.sleep(0.7)
        client.hdel(unacked, "tag")

    thread = threading.Thread(target=worker)
    thread.start()
    t0 = time.monotonic()
    result = wait(url, queue, unacked)
    elapsed = time.monotonic() - t0
    thread.join()

    assert result["drained"] is True
    assert result["waiting_at_start"] == {queue: 1}
    assert elapsed >= 1.2 + SETTLE
    assert result["seconds"] == pytest.approx(elapsed, abs=0.2)


def test_a_message_that_stays_times_out_and_is_named(broker):
    url, client, queue, unacked = broker
    client.lpush(queue, b"one", b"two")
    client.hset(unacked, "tag", b"three")

    result = wait(url, queue, unacked, timeout=0.5)

    assert result["drained"] is False
    assert result["waiting_at_end"] == {queue: 2, unacked: 1}
    assert 0.5 <= result["seconds"] < 2.0


def test_the_backlog_names_only_what_waits(broker):
    _, client, queue, unacked = broker
    other = f"{queue}-empty"
    client.lpush(queue, b"a")
    client.lpush(f"{queue}{KOMBU_PRIORITY_SEPARATOR}6", b"b", b"c")

    assert celery_backlog(client, [queue, other], unacked) == {queue: 3}


def test_the_queues_are_the_default_and_every_routed_one():
    queues = celery_queues()

    assert settings.CELERY_TASK_DEFAULT_QUEUE in queues
    assert {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} <= set(queues)
