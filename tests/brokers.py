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


def celery_routes_use(routes: dict) -> None:
    """Route this process's tasks by `routes` from now on. Celery builds its router once, from the routes of that
    moment, and keeps it: setting `conf.task_routes` alone changes nothing once any task has been routed, and the
    tasks would go on to queues no test worker reads (a test waiting for them then hangs)."""
    celery_app.conf.task_routes = routes
    celery_app.amqp.flush_routes()
    celery_app.amqp.__dict__.pop("router", None)  # kombu's cached_property: rebuilt from the new routes on next use
