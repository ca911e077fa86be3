"""Real outside processes for integration tests, started on loopback and stopped afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from portal.celery import app as celery_app
from portal.settings.base import celery_task_routes
from tests.brokers import celery_routes_use, redis_queue_forget
from tests.databases import database_url

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_QUEUES = ("default", "ingest", "maintenance")  # portal.settings.base.celery_task_routes


@dataclass
class WorkerProcess:
    queue: str  # the default queue of the prefix
    process: subprocess.Popen[bytes]
    log: Path
    prefix: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _test_database_url() -> str:
    return database_url()


def _test_store_root() -> str:
    """This process's blob stores (portal.settings.test), shared with the processes it starts."""
    return str(Path(settings.STORAGES["blobs"]["OPTIONS"]["location"]).parent)


@pytest.fixture
def celery_worker_process(transactional_db: Any, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A real `celery worker` process on Redis, reading the test database, consuming production's three queues
    (`default`, `ingest`, `maintenance`, with production's routes) under a prefix of its own.

    Tasks sent from the test with eager mode off go through Redis to it; tasks it queues itself go to the same
    private queues, so parallel test runs never take each other's work.
    """
    prefix = f"test-{uuid.uuid4().hex[:12]}-"
    queue = f"{prefix}default"
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": _test_database_url(),
        "ENCLAVE_TEST_STORE_ROOT": _test_store_root(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_QUEUE_PREFIX": prefix,
    }
    for name in ("CELERY_SINGLE_QUEUE", "CELERY_TASK_DEFAULT_QUEUE"):
        env.pop(name, None)
    queues = ",".join(f"{prefix}{name}" for name in PRODUCTION_QUEUES)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "-l", "info", "-c", "1", "-Q", queues,
             "-n", f"{prefix}@localhost", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_default_queue, celery_app.conf.task_routes
    celery_app.conf.task_always_eager = False
    celery_app.conf.task_default_queue = queue
    celery_routes_use(celery_task_routes(prefix))
    try:
        yield WorkerProcess(queue=queue, process=process, log=log, prefix=prefix)
    finally:
        (
            celery_app.conf.task_always_eager,
            celery_app.conf.task_default_queue,
            celery_app.conf.task_routes,
        ) = previous
        celery_routes_use(celery_app.conf.task_routes)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for name in PRODUCTION_QUEUES:
            redis_queue_forget(f"{prefix}{name}")


@dataclass
class ListenerProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


LISTENER_STARTUP_SECONDS = 30


@pytest.fixture
def dicom_listener_process(celery_worker_process: WorkerProcess, tmp_path: Path) -> Iterator[ListenerProcess]:
    """`manage.py dicom_listener` as a real process on a free loopback port, on the test database and blob stores,
    queueing its work to the real worker's private queue. Stopped with SIGTERM, as a service manager would."""
    log = tmp_path / "listener.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": _test_database_url(),
        "ENCLAVE_TEST_STORE_ROOT": _test_store_root(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_QUEUE_PREFIX": celery_worker_process.prefix,
    }
    for name in ("CELERY_SINGLE_QUEUE", "CELERY_TASK_DEFAULT_QUEUE"):
        env.pop(name, None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + LISTENER_STARTUP_SECONDS
        port = None
        while port is None:
            found = re.search(r"DICOM listener on 127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
            if found:
                port = int(found.group(1))
            elif process.poll() is not None:
                pytest.fail(f"the DICOM listener exited with {process.returncode}:\n{log.read_text(errors='replace')}")
            elif time.monotonic() > deadline:
                pytest.fail(f"the DICOM listener did not start:\n{log.read_text(errors='replace')}")
            else:
                time.sleep(0.1)
        yield ListenerProcess(port=port, process=process, log=log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# Crash tests: workers killed and started again on one queue
# ------------------------------------------------------------------------------

CRASH_VISIBILITY_TIMEOUT = 5
WORKER_READY_SECONDS = 30


@dataclass
class RestartableWorker:
    """Real `celery worker` processes, one at a time, on one private queue: `start()`, `kill()` as a crash would
    (SIGKILL to the whole process group, the pool child too), `start()` again. Each process logs to its own file.

    The workers recover an unacknowledged message after `visibility_timeout` seconds instead of production's
    minutes, checking every second, from unacked keys of their own (`unacked_keys`) so that they never redeliver
    the messages of other workers sharing this Redis. Tasks must therefore finish well within that time. `env`
    and `visibility_timeout` may be changed before a start (e.g. INGEST_STALE_SECONDS).
    """

    queue: str
    env: dict[str, str]
    folder: Path
    unacked_keys: tuple[str, str, str]
    visibility_timeout: int = CRASH_VISIBILITY_TIMEOUT
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def _transport_options(self) -> str:
        unacked, index, mutex = self.unacked_keys
        return json.dumps(
            {
                "visibility_timeout": self.visibility_timeout,
                "unacked_key": unacked,
                "unacked_index_key": index,
                "unacked_mutex_key": mutex,
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
            }
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start a worker and return once it consumes (its log says `ready`)."""
        if self.running:
            raise RuntimeError("a worker of this queue is already running")
        log = self.folder / f"worker-{len(self.logs) + 1}.log"
        self.logs.append(log)
        env = {**self.env, "CELERY_TEST_TRANSPORT_OPTIONS": self._transport_options()}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "portal", "worker", "-l", "info", "-c", "1", "-Q", self.queue,
                 "-n", f"{self.queue}-{len(self.logs)}@localhost", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while " ready." not in log.read_text(errors="replace"):
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited with {self.process.returncode}:\n{self.output(-1)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the worker was not ready within {WORKER_READY_SECONDS} s:\n{self.output(-1)}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the worker's process group: the main process and the pool child die mid-task, acking nothing."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the worker the way a service manager does (SIGTERM, then SIGKILL if it hangs)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self, index: int | None = None) -> str:
        """The log of one worker (by index, -1 the latest), or of all of them in order."""
        logs = self.logs if index is None else [self.logs[index]]
        return "".join(log.read_text(errors="replace") for log in logs)


@pytest.fixture
def restartable_celery_worker(transactional_db: Any, tmp_path: Path) -> Iterator[RestartableWorker]:
    """A private queue with eager mode off in this process, and a `RestartableWorker` for it, not yet started."""
    queue = f"crash-{uuid.uuid4().hex[:12]}"
    unacked_keys = (f"{queue}-unacked", f"{queue}-unacked-index", f"{queue}-unacked-mutex")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": _test_database_url(),
        "ENCLAVE_TEST_STORE_ROOT": _test_store_root(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CELERY_SINGLE_QUEUE": "true",
    }
    worker = RestartableWorker(queue=queue, env=env, folder=tmp_path, unacked_keys=unacked_keys)
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_default_queue, celery_app.conf.task_routes
    celery_app.conf.task_always_eager = False
    celery_app.conf.task_default_queue = queue
    celery_routes_use({})
    try:
        yield worker
    finally:
        (
            celery_app.conf.task_always_eager,
            celery_app.conf.task_default_queue,
            celery_app.conf.task_routes,
        ) = previous
        celery_routes_use(celery_app.conf.task_routes)
        worker.stop()
        redis_queue_forget(queue)
