"""Real outside processes for integration tests, started on loopback and stopped afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from portal.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    queue: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _test_database_url() -> str:
    s = connection.settings_dict
    user = s.get("USER") or "enclave"
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{s['NAME']}"


def _test_store_root() -> str:
    """This process's blob stores (portal.settings.test), shared with the processes it starts."""
    return str(Path(settings.STORAGES["blobs"]["OPTIONS"]["location"]).parent)


@pytest.fixture
def celery_worker_process(transactional_db: Any, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A real `celery worker` process on Redis, reading the test database, consuming a queue of its own.

    Tasks sent from the test with eager mode off go through Redis to it; tasks it queues itself go to the same
    private queue, so parallel test runs never take each other's work.
    """
    queue = f"test-{uuid.uuid4().hex[:12]}"
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": _test_database_url(),
        "ENCLAVE_TEST_STORE_ROOT": _test_store_root(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CELERY_SINGLE_QUEUE": "true",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "-l", "info", "-c", "1", "-Q", queue,
             "-n", f"{queue}@localhost", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_default_queue, celery_app.conf.task_routes
    celery_app.conf.task_always_eager = False
    celery_app.conf.task_default_queue = queue
    celery_app.conf.task_routes = {}
    try:
        yield WorkerProcess(queue=queue, process=process, log=log)
    finally:
        (
            celery_app.conf.task_always_eager,
            celery_app.conf.task_default_queue,
            celery_app.conf.task_routes,
        ) = previous
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        with celery_app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


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
        "CELERY_TASK_DEFAULT_QUEUE": celery_worker_process.queue,
        "CELERY_SINGLE_QUEUE": "true",
    }
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
