"""Scale-out on parts that exist (issue 10): several DICOM listener processes on one port (SO_REUSEPORT), and
several Celery worker processes on one ingest queue, each with the queues and routes production uses
(portal.settings.base.celery_task_routes) under a private prefix, so no other run's workers take our tasks.

Every wait has a deadline; a failure prints the queue lengths and every process's log. Every process is stopped in
the fixtures' teardown, whatever happened.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from audit.events import EventType
from audit.models import AuditEvent
from devices.models import Device
from devices.services import device_register_approved_by_operator
from portal.celery import app as celery_app
from portal.settings.base import celery_task_routes
from studies.dicom.synthetic import make_study
from studies.models import IngestItem, Instance
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.brokers import celery_routes_use, redis_queue_forget
from tests.integration.conftest import ROOT, _test_database_url, _test_store_root
from tests.studies.net.scu import associate, sop_instance_uid, write_files

pytestmark = pytest.mark.integration

STARTUP_SECONDS = 60
PROCESSING_SECONDS = 180
STOP_SECONDS = 30
FINAL = {s.value for s in IngestItem.FINAL_STATES}
QUEUES = ("ingest", "default", "maintenance")


@dataclass
class Stack:
    """The private queues of one test, and the worker and listener processes started on them."""

    prefix: str
    env: dict[str, str]
    folder: Path
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def queue(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _start(self, label: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.folder / f"{label}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append((label, process, log))
        return process, log

    def _wait_for_line(self, label: str, process: subprocess.Popen[bytes], log: Path, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            found = re.search(pattern, log.read_text(errors="replace"))
            if found:
                return found
            if process.poll() is not None:
                pytest.fail(f"{label} exited with {process.returncode} at start:\n{self.report()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{label} did not start within {STARTUP_SECONDS} s:\n{self.report()}")
            time.sleep(0.1)

    def worker(self, label: str, queues: tuple[str, ...]) -> Path:
        """A `celery worker` (one process, prefetch 1, as production) consuming these of our queues."""
        process, log = self._start(
            label,
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "-l", "info", "-c", "1",
             "-Q", ",".join(self.queue(q) for q in queues), "-n", f"{label}-{self.prefix}@localhost",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
        )  # fmt: skip
        self._wait_for_line(label, process, log, r" ready\.")
        return log

    def listener(self, processes: int) -> tuple[int, list[int]]:
        """`manage.py dicom_listener --processes N` on a free loopback port: (port, the listener processes' pids)."""
        process, log = self._start(
            "listener",
            [sys.executable, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0",
             "--processes", str(processes)],
        )  # fmt: skip
        found = self._wait_for_line(
            "listener", process, log, r"DICOM listener on 127\.0\.0\.1:(\d+) \((\d+) processes: ([\d, ]+)\)"
        )
        return int(found.group(1)), [int(p) for p in found.group(3).split(", ")]

    def log(self, label: str) -> str:
        return next(log for name, _, log in self.processes if name == label).read_text(errors="replace")

    def queue_lengths(self) -> dict[str, int]:
        with celery_app.connection_for_write() as conn:
            client = conn.default_channel.client
            return {q: int(client.llen(self.queue(q))) for q in QUEUES}

    def report(self) -> str:
        lines = [f"queue lengths: {self.queue_lengths()}"]
        for label, process, log in self.processes:
            lines.append(f"--- {label} (pid {process.pid}, exit {process.poll()}) ---")
            lines.append(log.read_text(errors="replace")[-6000:])
        return "\n".join(lines)

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = PROCESSING_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for label, process, _ in self.processes:
                if process.poll() is not None:
                    pytest.fail(f"{label} exited with {process.returncode} while waiting for {what}:\n{self.report()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.report()}")
            time.sleep(0.3)

    def stop_all(self) -> None:
        for _, process, _ in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def stack(transactional_db: Any, tmp_path: Path) -> Iterator[Stack]:
    """Private queues `<prefix>ingest`, `<prefix>default`, `<prefix>maintenance` with production's routes, eager mode
    off here; the processes a test starts get the same prefix and the test database and blob stores."""
    prefix = f"scale-{uuid.uuid4().hex[:10]}-"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": _test_database_url(),
        "ENCLAVE_TEST_STORE_ROOT": _test_store_root(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_QUEUE_PREFIX": prefix,
    }
    for name in ("CELERY_SINGLE_QUEUE", "CELERY_TASK_DEFAULT_QUEUE", "DICOM_LISTENER_PROCESSES"):
        env.pop(name, None)
    conf = celery_app.conf
    previous = conf.task_always_eager, conf.task_default_queue, conf.task_routes
    conf.task_always_eager = False
    conf.task_default_queue = f"{prefix}default"
    celery_routes_use(celery_task_routes(prefix))
    result = Stack(prefix=prefix, env=env, folder=tmp_path)
    try:
        yield result
    finally:
        conf.task_always_eager, conf.task_default_queue, conf.task_routes = previous
        celery_routes_use(conf.task_routes)
        result.stop_all()
        for queue in QUEUES:
            redis_queue_forget(result.queue(queue))


@pytest.fixture
def north(tenant_a: Tenant) -> Tenant:
    Tenant.objects.filter(pk=tenant_a.pk).update(ae_title="NORTH")
    tenant_a.refresh_from_db()
    with tenant_scope(tenant_a):
        device_register_approved_by_operator(
            kind=Device.Kind.MODALITY, name="Demo CT", ae_title="DEMO_CT", host="127.0.0.1", reason="test"
        )
    return tenant_a


def send_studies(port: int, folder: Path, *, associations: int, instances: int, parallel: int) -> set[str]:
    """`associations` associations at once (`parallel` at a time), each sending a study of `instances` objects;
    returns every SOP Instance UID sent. Every C-STORE must be answered with success."""
    batches = []
    for n in range(associations):
        blobs = make_study(series=1, instances_per_series=instances, patient_id=f"SCALE{n:03d}")
        batches.append(write_files(folder / f"study{n:03d}", blobs))

    def send(files: list[Path]) -> list[int]:
        result = associate(port=port, calling="DEMO_CT", called="NORTH", files=files)
        assert result.established, "association not established"
        return result.statuses

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        statuses = [s for answer in pool.map(send, batches, timeout=PROCESSING_SECONDS) for s in answer]
    assert statuses == [0x0000] * (associations * instances)
    return {sop_instance_uid(path.read_bytes()) for files in batches for path in files}


def items_final(tenant: Tenant, count: int) -> Callable[[], bool]:
    def check() -> bool:
        with tenant_scope(tenant):
            states = list(IngestItem.objects.values_list("state", flat=True))
        return len(states) >= count and all(s in FINAL for s in states)

    return check


def assert_each_indexed_once(tenant: Tenant, uids: set[str]) -> None:
    """Every object sent is one STORED item claimed once, one Instance, and counted once by INSTANCES_STORED."""
    with tenant_scope(tenant):
        items = list(IngestItem.objects.values_list("sop_instance_uid", "state", "attempts"))
        assert sorted(uid for uid, _, _ in items) == sorted(uids)
        assert {state for _, state, _ in items} == {IngestItem.State.STORED}
        assert {attempts for _, _, attempts in items} == {1}
        indexed = list(Instance.objects.values_list("sop_instance_uid", flat=True))
        assert sorted(indexed) == sorted(uids)
        stored = AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED)
        assert sum(int(extra.get("count", 1)) for extra in stored.values_list("extra", flat=True)) == len(uids)


def test_two_listener_processes_share_the_port_and_each_instance_is_indexed_once(stack, north, tmp_path):
    stack.worker("worker", QUEUES)
    port, pids = stack.listener(processes=2)
    assert len(pids) == 2

    # 16 associations: the kernel hashes each connection to one of the two sockets, so all 16 landing on one
    # process has a chance of 2 in 65,536.
    uids = send_studies(port, tmp_path / "sent", associations=16, instances=2, parallel=4)

    stack.wait(items_final(north, len(uids)), f"{len(uids)} items to be final")
    served = [int(p) for p in re.findall(r"association accepted: .*?, listener process (\d+)\)", stack.log("listener"))]
    assert len(served) == 16, stack.log("listener")
    assert set(served) == set(pids), f"associations by pid: {served}"
    assert_each_indexed_once(north, uids)

    # One SIGTERM to the parent stops every listener process.
    _, parent, _ = next(p for p in stack.processes if p[0] == "listener")
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=STOP_SECONDS) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_listener_process_that_dies_is_not_restarted_silently(stack):
    """One of the listener processes killed: the parent stops the other and fails, for the service manager to see."""
    port, pids = stack.listener(processes=2)
    _, parent, _ = next(p for p in stack.processes if p[0] == "listener")

    os.kill(pids[0], signal.SIGKILL)

    assert parent.wait(timeout=STOP_SECONDS) != 0
    assert "ended by itself" in stack.log("listener")
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_two_workers_on_one_ingest_queue_process_each_item_once(stack, north, tmp_path):
    """60 instances received; two worker processes consume the same ingest queue; every instance is indexed once,
    counted once by INSTANCES_STORED, and each worker did some of the work."""
    # Both on the ingest queue only. A third consumes the other two queues (the thumbnails go to `default`).
    first = stack.worker("ingest-1", ("ingest",))
    second = stack.worker("ingest-2", ("ingest",))
    stack.worker("others", ("default", "maintenance"))
    port, _ = stack.listener(processes=2)

    uids = send_studies(port, tmp_path / "sent", associations=6, instances=10, parallel=3)

    stack.wait(items_final(north, len(uids)), f"{len(uids)} items to be final")
    stack.wait(lambda: stack.queue_lengths()["ingest"] == 0, "the ingest queue to drain", timeout=60)
    assert_each_indexed_once(north, uids)
    done = re.compile(r"Task studies\.tasks\.ingest_\w+\[[0-9a-f-]+\] succeeded")
    by_worker = {path.stem: len(done.findall(path.read_text(errors="replace"))) for path in (first, second)}
    assert all(by_worker.values()), f"ingest tasks done by each worker: {by_worker}\n{stack.report()}"
    # The ingest tasks ran on the ingest workers only.
    assert not done.search(stack.log("others")), stack.log("others")
