"""Helpers for tests that use the real Redis broker."""

from __future__ import annotations

from portal.celery import app as celery_app


def redis_queue_forget(queue: str) -> int:
    """Delete every Redis key of a private queue (its messages at every priority, its bindings, the unacked
    bookkeeping of a `RestartableWorker`): what a Redis restart without persistence does to it. (kombu's
    `queue_delete` only deletes the queues this process declared itself.) Returns the keys deleted."""
    with celery_app.connection_for_write() as conn:
        client = conn.default_channel.client
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
        return int(client.delete(*keys)) if keys else 0
