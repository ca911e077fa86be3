"""Writes to a folder store reach the disk before they count (studies.storage.durable, settings.BLOB_SYNC): the
file's data synced on its own descriptor before its name is given, then the folders that name it and the folders
made for it; a promoted copy's new name; a study's key files. In the pipeline: the quarantined copy before its
receipt is recorded (a C-STORE is answered after that), the archive's names and the replica's data before the
batch that indexes it commits. The test settings turn it off for speed; here it is on, with every fdatasync and
fsync the process makes recorded (and still made)."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
from django.core.files.storage import storages
from django.db import connection

from studies.storage.blobs import PRIMARY, QUARANTINE, REPLICA, blob_sealed_put


class _Syncs:
    """Every fdatasync, fsync and SQL statement of the process, in order: (what, path or statement)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        for call in ("fdatasync", "fsync"):
            real = getattr(os, call)

            def recorded(fd: int, call: str = call, real=real) -> None:
                self.events.append((call, os.readlink(f"/proc/self/fd/{fd}")))
                real(fd)

            monkeypatch.setattr(os, call, recorded)

    def of(self, call: str) -> list[str]:
        return [path for what, path in self.events if what == call]

    def sql(self, execute, sql, params, many, context):  # a connection.execute_wrapper
        self.events.append(("sql", sql))
        return execute(sql, params, many, context)


@pytest.fixture
def syncs(monkeypatch, settings):
    settings.BLOB_SYNC = True
    return _Syncs(monkeypatch)


def _new_name() -> tuple[str, str]:
    top = f"t0/durable-{uuid.uuid4().hex[:8]}"
    return top, f"{top}/ab/{uuid.uuid4().hex}"


def test_a_copy_is_synced_before_its_name_is_given_then_its_folder_and_the_folders_made_for_it(syncs):
    storage = storages[REPLICA]
    top, name = _new_name()

    blob_sealed_put(store=REPLICA, name=name, sealed=b"ciphertext")

    path = storage.path(name)
    [data] = syncs.of("fdatasync")
    assert data.startswith(path + ".")  # synced under its temporary name, before its rename to `path`
    assert data.endswith(".tmp")
    folders = set(syncs.of("fsync"))
    assert {os.path.dirname(path), storage.path(top), os.path.dirname(storage.path(top))} <= folders
    assert all(path.startswith(folder + "/") for folder in folders)  # its own folder and those above, no other
    assert syncs.events.index(("fdatasync", data)) < syncs.events.index(("fsync", os.path.dirname(path)))
    with storage.open(name) as handle:
        assert handle.read() == b"ciphertext"


def test_a_second_copy_in_a_folder_that_exists_syncs_that_folder_alone(syncs):
    storage = storages[REPLICA]
    _, name = _new_name()
    blob_sealed_put(store=REPLICA, name=name, sealed=b"first")
    syncs.events.clear()

    blob_sealed_put(store=REPLICA, name=name.rsplit("/", 1)[0] + "/" + uuid.uuid4().hex, sealed=b"second")

    assert len(syncs.of("fdatasync")) == 1
    assert syncs.of("fsync") == [os.path.dirname(storage.path(name))]


def test_a_promoted_copys_data_and_new_name_are_synced_whoever_wrote_it(syncs):
    from studies.storage.blobs import _file_link

    _, source = _new_name()
    blob_sealed_put(store=QUARANTINE, name=source, sealed=b"sealed bytes")
    _, name = _new_name()
    syncs.events.clear()

    assert _file_link(source=(QUARANTINE, source), store=PRIMARY, name=name, size=len(b"sealed bytes"))

    assert syncs.of("fdatasync") == [storages[PRIMARY].path(name)]
    assert os.path.dirname(storages[PRIMARY].path(name)) in syncs.of("fsync")


def test_a_receipts_copy_promoted_and_removed_meanwhile_is_passed_over(syncs, tenant_a):
    """A door syncs its quarantined copies after its receipt; a worker may have promoted one (syncing it under its
    archive name) and removed it by then."""
    from studies.models import Blob
    from studies.storage.blobs import blob_files_sync, blob_seal
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant_a):
        gone, kept = (blob_seal(kind=Blob.Kind.QUARANTINE, data=b"x" * 10, replicate=False, sync=False)
                      for _ in range(2))  # fmt: skip
        storages[QUARANTINE].delete(gone.storage_name)
        blob_files_sync([gone, kept])

    assert storages[QUARANTINE].path(kept.storage_name) in syncs.of("fdatasync")
    assert storages[QUARANTINE].path(gone.storage_name) not in syncs.of("fdatasync")


def test_a_study_key_file_is_synced_in_both_stores_with_its_folders_up_to_the_store(syncs):
    from studies.storage.keys import _key_file_write

    name = f"t0/keys/{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}.v1"

    _key_file_write(name, b"wrapped key")

    for store in (PRIMARY, REPLICA):
        storage = storages[store]
        path = storage.path(name)
        assert path in syncs.of("fdatasync")
        folders = set(syncs.of("fsync"))
        assert {os.path.dirname(path), storage.path("t0/keys"), storage.path("t0"), str(storage.location)} <= folders


def test_within_together_copies_start_their_write_back_and_are_synced_at_its_end_each_folder_once(syncs):
    from studies.storage import durable

    storage = storages[REPLICA]
    _, first = _new_name()
    second = first.rsplit("/", 1)[0] + "/" + uuid.uuid4().hex
    with durable.together():
        blob_sealed_put(store=REPLICA, name=first, sealed=b"one")
        blob_sealed_put(store=REPLICA, name=second, sealed=b"two")
        assert syncs.of("fdatasync") == []  # not yet: the disk writes them meanwhile

    assert sorted(syncs.of("fdatasync")) == sorted([storage.path(first), storage.path(second)])  # together, on threads
    assert syncs.of("fsync").count(os.path.dirname(storage.path(first))) == 1


def test_within_together_a_copy_that_failed_on_the_way_leaves_nothing_to_sync(syncs, monkeypatch):
    """A replica store that fails does not fail the batch (blob_promote carries on): its half-written copy, never
    named, is not among the block's syncs, which then sync the others."""
    from studies.storage import durable

    storage = storages[REPLICA]
    _, failing = _new_name()
    _, kept = _new_name()
    real_replace = os.replace

    def replace(source, target):
        if target == storage.path(failing):
            raise OSError("the replica store's disk is full")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with durable.together():
        with pytest.raises(OSError, match="disk is full"):
            blob_sealed_put(store=REPLICA, name=failing, sealed=b"one")
        blob_sealed_put(store=REPLICA, name=kept, sealed=b"two")

    assert syncs.of("fdatasync") == [storage.path(kept)]
    assert not storage.exists(failing)


def test_within_together_an_error_syncs_nothing_the_caller_rolls_back(syncs):
    from studies.storage import durable

    def failing_batch() -> None:
        with durable.together():
            blob_sealed_put(store=REPLICA, name=_new_name()[1], sealed=b"one")
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        failing_batch()

    assert syncs.of("fdatasync") == []


@pytest.mark.django_db(transaction=True)
def test_a_stow_requests_copies_are_synced_together_while_their_receipt_is_recorded_and_before_it_returns(
    syncs, tenant_a, monkeypatch
):
    """ingest_receive_many (STOW-RS: the request answers after it returns): the parts' copies, written without a
    sync each, are synced together on the pool's threads while the receipt's statement runs, as a C-STORE's copy
    is, and every sync has ended when it returns. Each copy's sync is held until the statement has run (up to
    5 s): with the syncs made before the statement, as they were until session 16, the statement never runs
    while they wait, and they go on without it (`held` False)."""
    from studies import services
    from studies.dicom.synthetic import make_instance
    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    quarantine = storages[QUARANTINE]
    root = Path(quarantine.location)
    statement_ran, threads, held = threading.Event(), [], []
    fdatasync = os.fdatasync  # _Syncs' recorder

    def fdatasync_held(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(root):  # a copy's, not a key file's
            threads.append(threading.current_thread().name)
            held.append(statement_ran.wait(timeout=5))
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync_held)

    def receipt_waits(execute, sql, params, many, context):
        try:
            return syncs.sql(execute, sql, params, many, context)
        finally:
            if "studies_ingestitem" in sql and "INSERT" in sql.upper():
                statement_ran.set()

    connection.close()  # a new connection prepares its statements anew: their text is then seen
    with tenant_scope(tenant_a):
        sealed = [services.ingest_quarantine(data=make_instance()) for _ in range(2)]
        assert not [path for path in syncs.of("fdatasync") if Path(path).is_relative_to(root)]  # not one by one
        with connection.execute_wrapper(receipt_waits):
            services.ingest_receive_many(source=IngestItem.Source.STOWRS, batch=uuid.uuid4(),
                                         quarantined=[(blob, "part") for blob in sealed])  # fmt: skip
        returned = list(syncs.events)

    paths = [quarantine.path(blob.storage_name) for blob in sealed]
    assert held == [True, True]  # both syncs were under way while the statement ran, and ended after it
    assert len(threads) == 2
    assert all(thread.startswith("blob-sync") for thread in threads)
    assert sorted(path for what, path in returned if what == "fdatasync" and Path(path).is_relative_to(root)) == sorted(
        paths
    )
    assert ("fsync", os.path.dirname(paths[0])) in returned


def test_a_stow_requests_sync_that_fails_fails_the_call_after_its_receipt_is_recorded(syncs, tenant_a, monkeypatch):
    """As a C-STORE's: a copy that cannot be synced is never answered as stored (ingest_receive_many raises, so the
    request fails), once the receipt's statement has ended; the receipt stands for the worker."""
    from studies import services
    from studies.dicom.synthetic import make_instance
    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    def fdatasync_fails(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with tenant_scope(tenant_a):
        sealed = [services.ingest_quarantine(data=make_instance()) for _ in range(2)]
        monkeypatch.setattr(os, "fdatasync", fdatasync_fails)
        with pytest.raises(OSError, match="Input/output error"):
            services.ingest_receive_many(source=IngestItem.Source.STOWRS, batch=uuid.uuid4(),
                                         quarantined=[(blob, "part") for blob in sealed])  # fmt: skip
        assert IngestItem.objects.filter(quarantine__in=sealed).count() == 2


def test_behind_writes_on_the_pools_threads_while_the_caller_goes_on_and_wait_ends_them_all():
    from studies.storage import durable

    release, threads, done = threading.Event(), [], []

    def write(number: int) -> None:
        threads.append(threading.current_thread().name)
        release.wait(timeout=10)
        done.append(number)

    behind = durable.Behind(limit=3)
    behind.submit(lambda: write(1))
    behind.submit(lambda: write(2))
    assert done == []  # the caller goes on while both are written
    release.set()
    behind.wait()

    assert sorted(done) == [1, 2]
    assert all(thread.startswith("blob-sync") for thread in threads)


def test_behind_runs_at_most_its_limit_of_writes_at_once():
    import time

    from studies.storage import durable

    lock, running, most = threading.Lock(), [0], [0]

    def write() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    behind = durable.Behind(limit=2)
    for _ in range(6):
        behind.submit(write)
        assert running[0] <= 2
    behind.wait()

    assert most[0] == 2


def test_behind_raises_the_first_failure_once_every_write_has_ended():
    import time

    from studies.storage import durable

    ended = []

    def fails() -> None:
        raise OSError(28, "No space left on device")

    def slow() -> None:
        time.sleep(0.05)
        ended.append("slow")

    behind = durable.Behind(limit=3)
    behind.submit(fails)
    behind.submit(slow)
    with pytest.raises(OSError, match="No space left"):
        behind.wait()
    assert ended == ["slow"]
    behind.wait()  # nothing left: the failure was raised once


def test_behind_writes_in_the_callers_context_so_within_together_they_are_synced_at_its_end(syncs):
    from studies.storage import durable

    storage = storages[REPLICA]
    _, name = _new_name()
    with durable.together():
        behind = durable.Behind()
        behind.submit(lambda: blob_sealed_put(store=REPLICA, name=name, sealed=b"ciphertext"))
        behind.wait()
        assert syncs.of("fdatasync") == []  # recorded for the block's end, not synced on the thread

    assert syncs.of("fdatasync") == [storage.path(name)]


def _written(count: int) -> list[str]:
    storage = storages[REPLICA]
    names = [_new_name()[1] for _ in range(count)]
    for name in names:
        path = storage.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(b"ciphertext")
    return [storage.path(name) for name in names]


def test_many_files_are_synced_at_once_every_files_data_before_any_folder(syncs, monkeypatch):
    """files_sync issues its syncs together (the file system commits them at once, instead of one journal commit
    after another): three files' fdatasyncs all wait at a barrier of three, which syncs one at a time never pass."""
    from studies.storage import durable

    paths = _written(3)
    barrier = threading.Barrier(3, timeout=20)
    recorded = os.fdatasync  # the fixture's, which records and then syncs

    def together_fdatasync(fd: int) -> None:
        barrier.wait()  # BrokenBarrierError (the test fails) unless all three are in a sync at once
        recorded(fd)

    monkeypatch.setattr(os, "fdatasync", together_fdatasync)
    durable.files_sync(paths)

    assert sorted(syncs.of("fdatasync")) == sorted(paths)
    last_data = max(syncs.events.index(("fdatasync", path)) for path in paths)
    folders = {os.path.dirname(path) for path in paths}
    assert sorted(syncs.of("fsync")) == sorted(folders)  # each folder once
    assert min(syncs.events.index(("fsync", folder)) for folder in folders) > last_data


def test_a_sync_that_fails_is_raised_after_the_others_end_and_no_folder_is_synced(syncs, monkeypatch):
    from studies.storage import durable

    paths = _written(3)
    recorded = os.fdatasync

    def failing_fdatasync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == paths[1]:
            raise OSError(5, "Input/output error")
        recorded(fd)

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(OSError, match="Input/output error"):
        durable.files_sync(paths)

    assert sorted(syncs.of("fdatasync")) == sorted([paths[0], paths[2]])  # the others ended before it was raised
    assert syncs.of("fsync") == []  # a name is made durable only after its data


def test_a_forked_child_syncs_on_a_pool_of_its_own_even_if_the_parent_held_the_pools_lock(syncs):
    """A gunicorn or Celery worker forked from a process that used the pool: the parent's threads are not in the
    child, and a lock held by one of the parent's threads at the fork would never be released there."""
    import signal

    from studies.storage import durable

    durable.files_sync(_written(2))  # the parent's pool, made
    with durable._sync_pool_lock:  # held by the parent at the fork
        pid = os.fork()
        if pid == 0:  # the child: exits 0 once its own syncs are done; SIGALRM ends it if they hang
            signal.alarm(20)
            code = 1
            try:
                durable.files_sync(_written(3))
                code = 0
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), "the child's syncs hung on the parent's pool or lock"
    assert os.WEXITSTATUS(status) == 0


def test_nothing_is_synced_when_it_is_turned_off(syncs, settings):
    from studies.storage.keys import _key_file_write

    settings.BLOB_SYNC = False
    blob_sealed_put(store=REPLICA, name=_new_name()[1], sealed=b"ciphertext")
    _key_file_write(f"t0/keys/00/{uuid.uuid4().hex}.v1", b"wrapped key")

    assert syncs.events == []


@pytest.mark.django_db(transaction=True)
def test_a_c_store_copy_is_synced_while_its_receipt_statement_runs_and_before_the_door_answers(
    syncs, tenant_a, monkeypatch
):
    """ingest_receive (the C-STORE's path: the listener answers once it returns): the copy's data and folder are
    synced on a thread of the pool while the receipt's statement runs, and both have ended when it returns. The
    statement waits (up to 10 s) for the copy's sync to have begun: with the sync made before or after the
    statement, as it was, it would wait in vain."""
    import threading

    from studies import services
    from studies.dicom.synthetic import make_instance
    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    sync_begun, overlapped, threads = threading.Event(), [], []
    fdatasync = os.fdatasync  # _Syncs' recorder

    quarantined = Path(storages[QUARANTINE].location)

    def fdatasync_begun(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(quarantined):  # the copy's, not a key file's
            threads.append(threading.current_thread().name)
            sync_begun.set()
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync_begun)

    def receipt_waits(execute, sql, params, many, context):
        if "studies_ingestitem" in sql and "INSERT" in sql.upper():
            overlapped.append(sync_begun.wait(timeout=10))
        return syncs.sql(execute, sql, params, many, context)

    connection.close()  # a new connection prepares its statements anew: their text is then seen
    with tenant_scope(tenant_a), connection.execute_wrapper(receipt_waits):
        item = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_instance(),
                                       filename="x.dcm", queue=False)  # fmt: skip
        returned = list(syncs.events)
    path = storages[QUARANTINE].path(item.quarantine.storage_name)

    assert overlapped == [True]
    assert len(threads) == 1
    assert threads[0].startswith("blob-sync")
    assert ("fdatasync", path) in returned
    assert ("fsync", os.path.dirname(path)) in returned


def test_a_c_store_sync_that_fails_fails_the_receipt_after_its_statement(syncs, tenant_a, monkeypatch):
    """A copy that cannot be synced is never answered as stored: ingest_receive raises (the listener answers
    out of resources and the sender keeps the object), once the receipt's statement has ended too."""
    from studies import services
    from studies.dicom.synthetic import make_instance
    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    def fdatasync_fails(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync_fails)
    with tenant_scope(tenant_a), pytest.raises(OSError, match="Input/output error"):
        services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_instance(),
                                filename="x.dcm", queue=False)  # fmt: skip


@pytest.mark.django_db(transaction=True)  # the receipt queues processing on commit (eager in the test settings)
def test_an_object_received_is_on_disk_before_it_is_answered_and_archived_before_it_is_indexed(
    syncs, tenant_a, monkeypatch
):
    from studies import services
    from studies.dicom.synthetic import make_instance
    from studies.models import Blob, IngestItem, Instance
    from tenants.scoping import tenant_scope

    connection.close()  # a new connection prepares its statements anew: their text is then seen, not EXECUTE's
    commit = connection.commit
    monkeypatch.setattr(connection, "commit", lambda: (syncs.events.append(("commit", "")), commit())[1])
    with tenant_scope(tenant_a), connection.execute_wrapper(syncs.sql):
        item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=make_instance(),
                                       filename="x.dcm")  # fmt: skip
        item.refresh_from_db()
        assert item.state == IngestItem.State.STORED
        blob = Blob.objects.get(instance=Instance.objects.get())

    events = syncs.events
    receipt = next(i for i, (what, sql) in enumerate(events) if what == "sql" and "studies_ingestitem" in sql
                   and "INSERT" in sql.upper())  # fmt: skip
    quarantined = Path(storages[QUARANTINE].location)
    # The door's sync of its copy (while the receipt's statement ran) ended before the worker's first statement.
    door_synced = [
        i for i, (what, p) in enumerate(events) if what == "fdatasync" and Path(p).is_relative_to(quarantined)
    ]
    assert door_synced
    assert max(door_synced) < next(i for i, (what, _) in enumerate(events) if i > receipt and what == "sql")
    indexed = next(i for i, (what, sql) in enumerate(events) if what == "sql"
                   and sql.upper().lstrip().startswith("INSERT") and "studies_instance" in sql)  # fmt: skip
    committed = next(i for i, (what, _) in enumerate(events) if what == "commit" and i > indexed)
    primary, replica = storages[PRIMARY].path(blob.storage_name), storages[REPLICA].path(blob.storage_name)
    replica_data = [
        i for i, (what, path) in enumerate(events)
        if what == "fdatasync" and (path == replica or path.startswith(replica + "."))
    ]  # fmt: skip
    archive_names = [i for i, (what, path) in enumerate(events)
                     if what == "fsync" and path in (os.path.dirname(primary), os.path.dirname(replica))]  # fmt: skip
    primary_data = [i for i, (what, path) in enumerate(events) if what == "fdatasync" and path == primary]
    assert primary_data
    assert primary_data[0] < committed  # the promoted copy's data, synced again by the worker before it commits
    assert replica_data
    assert replica_data[0] < committed  # on disk before the batch that indexes it commits
    assert len(archive_names) >= 2
    assert max(archive_names) < committed


def test_synced_meanwhile_waits_for_its_sync_even_when_the_block_fails_and_raises_the_blocks_error_first(syncs):
    """The block's failure goes first; the sync has ended by then (nothing runs on behind the caller); many files
    synced from a thread of the pool are synced on that thread, never waiting for another of the pool."""
    import threading

    from studies.storage import durable

    storage = storages[REPLICA]
    names = [_new_name()[1] for _ in range(3)]
    for name in names:
        blob_sealed_put(store=REPLICA, name=name, sealed=b"ciphertext")
    paths = [storage.path(name) for name in names]
    ended, on = threading.Event(), []

    def sync() -> None:
        on.append(threading.current_thread().name)
        durable.files_sync(paths)
        ended.set()

    with pytest.raises(ValueError, match="the block's"), durable.synced_meanwhile(sync):
        raise ValueError("the block's")

    assert ended.is_set()
    assert on[0].startswith("blob-sync")
    assert set(paths) <= set(syncs.of("fdatasync"))
