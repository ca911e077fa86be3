"""Copies written to a folder store in one write (studies.storage.blobs._file_put), as the ingest path does."""

from __future__ import annotations

import uuid

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import storages

from studies.storage.blobs import PRIMARY, blob_sealed_put


def test_a_copy_put_twice_under_one_name_is_replaced_whole_and_leaves_no_temporary_file():
    storage = storages[PRIMARY]
    folder = f"t0/test/{uuid.uuid4().hex[:8]}"
    name = f"{folder}/{uuid.uuid4().hex}"
    blob_sealed_put(store=PRIMARY, name=name, sealed=b"first")
    blob_sealed_put(store=PRIMARY, name=name, sealed=b"second, longer copy")
    with storage.open(name) as handle:
        assert handle.read() == b"second, longer copy"
    assert storage.listdir(folder)[1] == [name.rsplit("/", 1)[1]]
    storage.delete(name)


def test_a_name_outside_the_store_is_refused():
    with pytest.raises(SuspiciousFileOperation):
        blob_sealed_put(store=PRIMARY, name="../outside", sealed=b"x")


def _quarantined(sealed: bytes) -> str:
    from studies.storage.blobs import QUARANTINE

    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    blob_sealed_put(store=QUARANTINE, name=name, sealed=sealed)
    return name


def test_a_promoted_copy_is_the_quarantined_file_linked_not_written_again_and_a_second_attempt_replaces_it():
    """Issue 10: the primary copy of a promoted blob is a hard link to the checked quarantine file."""
    import os

    from studies.storage.blobs import QUARANTINE, _file_link

    source = _quarantined(b"sealed bytes")
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    blob_sealed_put(store=PRIMARY, name=name, sealed=b"a first attempt's copy")
    assert _file_link(source=(QUARANTINE, source), store=PRIMARY, name=name, size=len(b"sealed bytes"))
    primary, quarantine = storages[PRIMARY], storages[QUARANTINE]
    assert os.stat(primary.path(name)).st_ino == os.stat(quarantine.path(source)).st_ino
    # A retry after a worker died with the link made (its transaction rolled back): the same name, no temporary.
    assert _file_link(source=(QUARANTINE, source), store=PRIMARY, name=name, size=len(b"sealed bytes"))
    quarantine.delete(source)  # as on commit: the archive's name stays
    with primary.open(name) as handle:
        assert handle.read() == b"sealed bytes"
    folder, base = name.rsplit("/", 1)
    assert primary.listdir(folder)[1] == [base]  # no temporary name left
    primary.delete(name)


def test_a_link_that_cannot_be_made_or_a_file_of_another_size_is_left_to_the_writer(monkeypatch):
    import os

    from studies.storage import blobs

    source = _quarantined(b"sealed bytes")
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    assert not blobs._file_link(source=(blobs.QUARANTINE, source), store=PRIMARY, name=name, size=3)

    def no_link(*args: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert not blobs._file_link(source=(blobs.QUARANTINE, source), store=PRIMARY, name=name, size=12)
    assert not storages[PRIMARY].exists(name)
    storages[blobs.QUARANTINE].delete(source)


def _pages_cached(path: str) -> int:
    """How many of the file's pages are in the page cache (mincore(2) of a shared read-only mapping of it)."""
    import ctypes
    import mmap
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, ctypes.get_errno()
            return sum(byte & 1 for byte in vector.raw)
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 530_017, (1 << 20) + 5, 3 << 20])
def test_a_replica_copy_is_written_whole_past_the_page_cache_and_a_primary_copy_through_it(size):
    """Issue 10: the replica's copy (read only by the fixity and catch-up jobs, and on a failover) is written with
    O_DIRECT, in whole blocks from an aligned buffer, the last padded and the file then cut to its size; the
    primary's, which the reads serve, stays cached."""
    import os

    from studies.storage.blobs import REPLICA

    sealed = os.urandom(size)
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    blob_sealed_put(store=REPLICA, name=name, sealed=sealed)
    blob_sealed_put(store=PRIMARY, name=name, sealed=sealed)
    replica, primary = storages[REPLICA], storages[PRIMARY]
    assert _pages_cached(replica.path(name)) == 0
    assert _pages_cached(primary.path(name)) > 0
    for storage in (replica, primary):
        assert os.path.getsize(storage.path(name)) == size
        with storage.open(name) as handle:
            assert handle.read() == sealed
        storage.delete(name)


def test_a_replica_copy_on_a_file_system_without_direct_writes_is_written_as_usual(monkeypatch):
    """A file system that refuses O_DIRECT (the flag refused, or its first aligned write refused with EINVAL)
    gets the copy through the page cache, whole: nothing half-written, no error."""
    import errno
    import fcntl
    import os

    from studies.storage import blobs

    real_fcntl, real_pwrite = fcntl.fcntl, os.pwrite

    def no_direct_flag(fd: int, command: int, *args: int) -> int:
        if command == fcntl.F_SETFL and args and args[0] & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, command, *args)

    def no_direct_write(fd: int, data: object, offset: int) -> int:
        if real_fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    sealed = os.urandom(70_001)
    for patch in ((blobs.fcntl, "fcntl", no_direct_flag), (blobs.os, "pwrite", no_direct_write)):
        with monkeypatch.context() as patched:
            patched.setattr(*patch)
            name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
            blob_sealed_put(store=blobs.REPLICA, name=name, sealed=sealed)
        replica = storages[blobs.REPLICA]
        with replica.open(name) as handle:
            assert handle.read() == sealed
        assert _pages_cached(replica.path(name)) > 0  # written through the page cache
        replica.delete(name)


def test_a_replica_copy_whose_sync_fails_leaves_no_file_and_no_open_descriptor(monkeypatch):
    """A failure after the direct write (here the sync) removes the temporary file and closes its descriptor."""
    import os

    from studies.storage import blobs

    def failing_sync(fd: int, *, sync: bool = True) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs, "file_written", failing_sync)
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="Input/output error"):
        blob_sealed_put(store=blobs.REPLICA, name=name, sealed=os.urandom(9_000))
    assert len(os.listdir("/proc/self/fd")) == open_before
    folder = os.path.dirname(storages[blobs.REPLICA].path(name))
    assert os.listdir(folder) == []
