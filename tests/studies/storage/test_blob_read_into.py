"""Copies read into a thread's reused buffer (studies.storage.blobs.blob_sealed_read_into), WADO-RS's read of each
instance of one envelope chunk: the file's bytes, the same refusals as a read, None (the copy is mapped or read
instead) where it does not fit, and a read's chunks are its own bytes, which the next read does not change."""

from __future__ import annotations

import logging
import os
import threading
import uuid

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import storages

from studies.models import Blob
from studies.storage import blobs
from studies.storage.blobs import (
    PRIMARY,
    READ_BUFFER_BYTES,
    blob_read_chunks,
    blob_sealed_put,
    blob_sealed_read_into,
    blob_write,
)
from tenants.scoping import tenant_scope


@pytest.fixture
def copy_of():
    names = []

    def put(sealed: bytes) -> str:
        name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
        blob_sealed_put(store=PRIMARY, name=name, sealed=sealed)
        names.append(name)
        return name

    yield put
    for name in names:
        storages[PRIMARY].delete(name)


@pytest.mark.parametrize("size", [0, 1, 525_000, READ_BUFFER_BYTES - 1])
def test_a_copy_that_fits_is_read_into_the_buffer(copy_of, size):
    sealed = os.urandom(size)
    buffer = memoryview(bytearray(READ_BUFFER_BYTES))
    view = blob_sealed_read_into(store=PRIMARY, name=copy_of(sealed), buffer=buffer)
    assert view is not None
    assert view == sealed


def test_a_copy_that_does_not_fit_is_left_to_the_other_reads(copy_of):
    buffer = memoryview(bytearray(READ_BUFFER_BYTES))
    assert blob_sealed_read_into(store=PRIMARY, name=copy_of(os.urandom(READ_BUFFER_BYTES)), buffer=buffer) is None
    assert blob_sealed_read_into(store=PRIMARY, name=copy_of(os.urandom(1000)), buffer=buffer[:1000]) is None


def test_a_missing_copy_is_an_oserror_and_a_name_outside_the_store_is_refused():
    buffer = memoryview(bytearray(READ_BUFFER_BYTES))
    with pytest.raises(FileNotFoundError):
        blob_sealed_read_into(store=PRIMARY, name=f"t0/test/{uuid.uuid4().hex}", buffer=buffer)
    with pytest.raises(SuspiciousFileOperation):
        blob_sealed_read_into(store=PRIMARY, name="../outside", buffer=buffer)


def test_a_file_that_grew_after_its_size_was_taken_is_left_to_the_other_reads(copy_of, monkeypatch):
    name = copy_of(os.urandom(100_000))
    real_fstat = os.fstat

    class Smaller:
        def __init__(self, result: os.stat_result) -> None:
            self.st_size = result.st_size - 40_000

    buffer = memoryview(bytearray(READ_BUFFER_BYTES))
    monkeypatch.setattr(os, "fstat", lambda fd: Smaller(real_fstat(fd)))
    assert blob_sealed_read_into(store=PRIMARY, name=name, buffer=buffer) is None


def test_a_file_shorter_than_its_size_at_open_gives_the_bytes_there_are(copy_of, monkeypatch):
    """A copy cut after fstat: what is there (its tags then fail and the replica is served), never stale bytes
    of the buffer's previous read."""
    sealed = os.urandom(100_000)
    name = copy_of(sealed)
    real_fstat = os.fstat

    class Larger:
        def __init__(self, result: os.stat_result) -> None:
            self.st_size = result.st_size + 40_000

    buffer = memoryview(bytearray(b"\xff" * READ_BUFFER_BYTES))
    monkeypatch.setattr(os, "fstat", lambda fd: Larger(real_fstat(fd)))
    assert blob_sealed_read_into(store=PRIMARY, name=name, buffer=buffer) == sealed


@pytest.mark.django_db
def test_a_reads_chunks_are_its_own_and_each_thread_has_its_own_buffers(tenant_a):
    with tenant_scope(tenant_a):
        first, second = os.urandom(525_000), os.urandom(525_000)
        blob_first = blob_write(kind=Blob.Kind.EXPORT, data=first)
        blob_second = blob_write(kind=Blob.Kind.EXPORT, data=second)
        chunks = blob_read_chunks(blob=blob_first)
        assert b"".join(blob_read_chunks(blob=blob_second)) == second
        assert b"".join(chunks) == first  # the second read reused the buffers; the first's chunks are unchanged
        mine = blobs._read_buffers()
        theirs = []
        thread = threading.Thread(target=lambda: theirs.append(blobs._read_buffers()))
        thread.start()
        thread.join()
        assert theirs[0][0].obj is not mine[0].obj
        assert theirs[0][1] is not mine[1]


@pytest.mark.django_db
def test_a_damaged_copy_read_into_the_buffer_is_a_failed_copy_and_the_replica_is_served(tenant_a, caplog):
    with tenant_scope(tenant_a):
        data = os.urandom(525_000)
        blob = blob_write(kind=Blob.Kind.EXPORT, data=data)
        path = storages[PRIMARY].path(blob.storage_name)
        with open(path, "r+b") as handle:
            handle.seek(300_000)
            byte = handle.read(1)
            handle.seek(300_000)
            handle.write(bytes([byte[0] ^ 1]))
        with caplog.at_level(logging.WARNING, logger="studies.storage.blobs"):
            assert b"".join(blob_read_chunks(blob=blob)) == data
    assert f"blob {blob.public_id} unreadable from blobs (DecryptionError)" in caplog.text
