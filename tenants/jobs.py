"""How a service queues follow-up work: by the task's registered name, once its transaction commits.

Tasks are doors: they import the services they call. A service that imported its task back would close an import
cycle (services <-> tasks), so it names the task instead, and Celery's own registry resolves the name to the same
task object: the same routing, the same eager mode in tests, the same `delay_on_commit`. A name no task carries is
an error at the call, not a message lost in the broker.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Task, current_app

_import_lock = threading.Lock()


def _task(name: str) -> Task:
    app = current_app
    if name not in app.tasks:
        # The worker imports every app's tasks module when it starts; the web process and the DICOM listener do
        # it here, on the first queueing (Celery's autodiscovery, the same list of apps). Under a lock: Celery runs
        # its autodiscovery once, so a second thread that asked while the first was still importing would find
        # the registry half filled (a threaded gunicorn's first concurrent uploads answered 500 NotRegistered).
        with _import_lock:
            if name not in app.tasks:
                app.loader.import_default_modules()
    return app.tasks[name]


def task_queue_on_commit(name: str, /, **kwargs: Any) -> None:
    """Queue the task `name` with keyword arguments `kwargs` when the current transaction commits (at once
    outside one); nothing is queued if it rolls back."""
    _task(name).delay_on_commit(**kwargs)


def task_queue(name: str, /, **kwargs: Any) -> None:
    """Queue the task `name` now, whatever the transaction: for work that is safe to repeat (a claim by
    compare-and-set in the task), such as the sweeper's requeue."""
    _task(name).delay(**kwargs)


def messaging_warm() -> None:
    """Make Celery ready to send, for a long-running process that queues tasks (the DICOM listener, each gunicorn
    worker), before it serves: its task registry (every app's tasks module), the app's finalization, its AMQP
    helper, result backend and producer pool are otherwise built by the first queueing, in the thread of the first
    object or request that queues one, which waits for them. The finalization (the app's `tasks`: every shared task
    bound to it) and the producer pool (which imports the broker's transport, kombu's Redis transport and what it
    imports) were about 0.15 s and 0.1 s of CPU in one process, paid inside a benchmark's first set that reached the
    process (docs/BENCHMARKS.md, "STOW-RS with four clients", h1 branch, session 7). Start-up work, not per-object
    work. None of it connects to the broker: a broker that is down is met at the first queueing, as before."""
    app = current_app
    app.loader.import_default_modules()
    # Each attribute is built on first access and kept by the app (cached properties): read them now. `tasks`
    # finalizes the app (every shared task bound to it: about 0.15 s of CPU at the first `_task` otherwise).
    app.tasks, app.amqp, app.backend, app.producer_pool  # noqa: B018
