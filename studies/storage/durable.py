"""Writes to a folder store that reach the disk before they count (settings.BLOB_SYNC, on unless turned off).

An object is stored once its row commits; PostgreSQL makes the row durable (its WAL is flushed at the commit), and
this makes the ciphertext and its key files durable too before the commit: the file's data (fdatasync), then its
name and the names of the folders made for it (fsync of each folder that holds one). A sender told that an object
was stored (a C-STORE success, a STOW-RS answer) must not lose it to a crash of the machine while its bytes were
still in the page cache. Orthanc does the same by default (its SyncStorageArea option).

Many files at once: within `together()` (the worker's batch) a write only starts its write-back
(sync_file_range) and the syncs are made when the block ends, before the caller commits, each folder once, several
at a time on threads (`files_sync`). A door writes its quarantined copies with `sync=False` and syncs them before
it answers (studies.storage.blobs `blob_files_sync`), on threads of the pool while the receipt's statement runs
(`synced_meanwhile`): STOW-RS a request's parts together (each part's copy written on a thread as the next is read,
`Behind`), C-STORE its one copy. Either way the disk writes the files while the process goes on with the next. The
worker syncs a promoted copy's data again (`linked`), so what it indexes never rests on a door's sync.

An S3 store needs none of it: an object it has accepted is stored. Only exactly Django's FileSystemStorage is
synced here, as studies.storage.blobs writes only it by hand.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage


def sync_on() -> bool:
    """Whether a folder store's writes are synced before they count (settings.BLOB_SYNC)."""
    return bool(getattr(settings, "BLOB_SYNC", True))


def folder_sync(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _data_sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _libc_sync_file_range() -> object:
    """sync_file_range(2) from the C library (Linux), else None: a file's write-back started without waiting."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def write_back_start(fd: int) -> None:
    """Have the disk start writing `fd`'s dirty pages now, without waiting (a later fdatasync then waits less)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]


class _Pending:
    """The files and folders written within one `together()` block, synced when it ends."""

    def __init__(self) -> None:
        self.files: dict[str, None] = {}
        self.folders: dict[str, None] = {}


_PENDING: ContextVar[_Pending | None] = ContextVar("enclave_durable_pending", default=None)


@contextmanager
def together() -> Iterator[None]:
    """Within it, a folder store's writes (`file_written`, `name_given`) start their write-back and are synced
    when the block ends without an error: every file's data, then every folder naming one, each once. The caller
    commits what counts them after the block (an error skips the syncs: the caller's transaction rolls back)."""
    pending = _Pending()
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
    files_sync(pending.files, folders=pending.folders)


def files_sync(paths: Iterable[str], *, folders: Iterable[str] = (), missing_ok: bool = False) -> None:
    """The data of the files `paths`, then the folders holding them and `folders`, each once, made durable.
    `missing_ok`: a file gone meanwhile is passed over (a quarantined copy that a worker promoted, syncing it
    under its archive name, and removed once that committed).

    Several syncs are made at once, on threads (`_syncs_run`): every file's data first, then every folder. One at a
    time, each waits for the disk (and on ext4 for a journal commit of its own) before the next begins; issued
    together, the file system can commit them in one journal transaction. Here, 10 new copies of 0.53 MB and their
    folders on a disk shared with other benchmarks: median 18.5 ms one at a time, 8.7 together; with their
    write-back started when written (as `file_written` does), 8.5 and 10.6, but 35 ms against 14 at worst. End to
    end (STOW-RS, one client, 11 alternated runs) the batch's storing to the answer fell from a median of 53 ms to 40:
    docs/BENCHMARKS.md, "h2 branch, session 10"."""
    if not sync_on():
        return
    paths = list(paths)

    def data_sync(path: str) -> None:
        try:
            _data_sync(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    _syncs_run(data_sync, paths)
    _syncs_run(folder_sync, list(dict.fromkeys([*(os.path.dirname(path) for path in paths), *folders])))


# How many syncs `files_sync` makes at once (threads of a pool of each process, made at its first use; a process
# forked after that, a Celery or gunicorn worker, makes its own).
SYNC_THREADS = 8
_sync_pool: dict[int, ThreadPoolExecutor] = {}
_sync_pool_lock = threading.Lock()


def _sync_pool_forget() -> None:
    """In a forked child: the parent's pool (its threads did not survive the fork) and a lock that a thread of the
    parent may have held at the fork, both made anew."""
    global _sync_pool_lock
    _sync_pool.clear()
    _sync_pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_sync_pool_forget)


# Set on the pool's own threads: a sync made there runs on that thread, never waits for another of the pool.
_on_pool_thread = threading.local()


def _pool_thread_mark() -> None:
    _on_pool_thread.yes = True


def _pool() -> ThreadPoolExecutor:
    """This process's pool of sync threads, made at its first use."""
    pid = os.getpid()
    pool = _sync_pool.get(pid)
    if pool is None:
        with _sync_pool_lock:
            pool = _sync_pool.get(pid)
            if pool is None:
                _sync_pool.clear()  # the parent's pool, if any: its threads did not survive the fork
                pool = _sync_pool[pid] = ThreadPoolExecutor(
                    SYNC_THREADS, thread_name_prefix="blob-sync", initializer=_pool_thread_mark
                )
    return pool


def _syncs_run(sync: Callable[[str], None], paths: list[str]) -> None:
    """`sync` of every one of `paths`, together on the pool's threads (one alone, or any on a thread of the pool,
    on the caller's), returning once all have ended; the first that failed is raised (the others have ended too, so
    nothing runs on behind the caller)."""
    if len(paths) <= 1 or getattr(_on_pool_thread, "yes", False):
        for path in paths:
            sync(path)
        return
    pool = _pool()
    futures = [pool.submit(sync, path) for path in paths]
    wait(futures)
    for future in futures:
        future.result()  # the first failure, raised


class Behind:
    """Writes a caller hands to the pool's threads so that it goes on meanwhile, at most `limit` at a time (a write
    past them waits for the oldest), all ended by `wait()` before anything counts them: a STOW-RS request's
    quarantined copies, each written while the request reads, identifies and encrypts the next part, and waited for
    before the receipt syncs and records them.

    Why (issue 10): on this virtual machine a copy written into new page-cache pages costs about 1.2-1.6 ms of CPU
    per 0.53 MB under load, in the kernel's copy of the `write` (the host backs each new page at its first touch),
    and a request wrote its ten parts one after the other between their encryptions. The kernel's copy holds no
    interpreter lock, so on a second core it runs beside the request's Python (docs/BENCHMARKS.md, session 16).

    The writes run in the caller's context: within `together()` they would be synced with the block's other files.

    `wait()` raises the first write that failed, after every write has ended: nothing runs on behind the caller.
    A thread of the pool (a sync made there) writes at once, on its own thread."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = max(1, limit)
        self.futures: list[Future[None]] = []

    def submit(self, write: Callable[[], None]) -> None:
        if getattr(_on_pool_thread, "yes", False):
            write()
            return
        running = [future for future in self.futures if not future.done()]
        if len(running) >= self.limit:
            wait(running[: len(running) - self.limit + 1])
        # In the caller's context: a write within `together()` is synced when that block ends, as the caller's own.
        self.futures.append(_pool().submit(contextvars.copy_context().run, write))

    def wait(self) -> None:
        futures, self.futures = self.futures, []
        wait(futures)
        for future in futures:
            future.result()  # the first failure, raised


@contextmanager
def synced_meanwhile(sync: Callable[[], None]) -> Iterator[None]:
    """`sync()` (a `files_sync` of files already written) on a thread of the pool while the block runs, so that the
    disk writes the files while the block waits for something else (the C-STORE's receipt statement, whose commit
    waits for PostgreSQL's WAL flush). The block ends once `sync` has ended, whatever the block did: nothing runs on
    behind the caller; a failure of the block is raised first, else that of `sync`."""
    if not sync_on():
        yield
        return
    future = _pool().submit(sync)
    try:
        yield
    finally:
        wait([future])
    future.result()


def file_written(fd: int, *, sync: bool = True) -> None:
    """A file about to be given its name has been written on `fd`: its data synced now, or within `together()` or
    with `sync=False` its write-back started, to be synced with the others once it has its name (`name_given`,
    `files_sync`)."""
    if not sync_on():
        return
    if sync and _PENDING.get() is None:
        os.fdatasync(fd)
    else:
        write_back_start(fd)


def name_given(path: str, made: list[str], *, sync: bool = True, data: bool = True) -> None:
    """`path` now names a written file (in folders of which `made` were just made for it): its folder, and the
    parents of the folders made, fsynced now; within `together()` recorded, with the file's data (`data`: not yet
    synced by `file_written`), for when the block ends; with `sync=False`, the folders made now and the rest later
    by the receipt (`files_sync`). Only a name that was given is recorded: a write that failed on the way leaves
    nothing to sync."""
    if not sync_on():
        return
    made_parents = [os.path.dirname(folder) for folder in made]
    pending = _PENDING.get()
    if pending is not None:
        if data:
            pending.files[path] = None
        pending.folders.update(dict.fromkeys([os.path.dirname(path), *made_parents]))
        return
    for folder in dict.fromkeys([*made_parents, *([os.path.dirname(path)] if sync else [])]):
        folder_sync(folder)


def linked(path: str, made: list[str]) -> None:
    """`path` is a new name (a hard link) of a file written earlier: its data and its name made durable, now or
    within `together()` when the block ends. The data is synced again whoever wrote it (an fdatasync of a file
    already on disk costs about 0.05 ms here): what the caller commits never rests on another process having
    synced it first."""
    if not sync_on():
        return
    pending = _PENDING.get()
    if pending is None:
        _data_sync(path)
    name_given(path, made, data=True)


def stored_file_sync(storage: Storage, name: str) -> None:
    """A file just saved through the storage API (`storage.save`), made durable when `storage` is a folder store:
    its data, then every folder from its own up to the store's root (the API does not say which folders it made,
    and these files are few: a study's key files)."""
    if not sync_on() or type(storage) is not FileSystemStorage:
        return
    path = storage.path(name)
    _data_sync(path)
    root = os.path.abspath(storage.location)
    folder = os.path.dirname(path)
    while True:
        folder_sync(folder)
        if os.path.abspath(folder) == root or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
