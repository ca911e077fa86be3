"""Copies read from a folder store with one os.read (studies.storage.blobs.blob_sealed_read), as WADO-RS does for
every instance: the same bytes and the same refusals as the Storage API's open and read."""

from __future__ import annotations

import os
import uuid

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage, storages

from studies.storage.blobs import PRIMARY, blob_sealed_put, blob_sealed_read


@pytest.mark.parametrize("size", [0, 1, 525_000, (3 << 20) + 5])
def test_a_copy_reads_back_whole_as_the_storage_api_reads_it(size):
    storage = storages[PRIMARY]
    assert type(storage) is FileSystemStorage  # the folder path is the one under test
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    sealed = os.urandom(size)
    blob_sealed_put(store=PRIMARY, name=name, sealed=sealed)
    try:
        got = blob_sealed_read(store=PRIMARY, name=name)
        with storage.open(name, "rb") as handle:
            assert got == handle.read() == sealed
    finally:
        storage.delete(name)


def test_a_missing_copy_is_an_oserror_and_a_name_outside_the_store_is_refused():
    with pytest.raises(FileNotFoundError):
        blob_sealed_read(store=PRIMARY, name=f"t0/test/{uuid.uuid4().hex}")
    with pytest.raises(SuspiciousFileOperation):
        blob_sealed_read(store=PRIMARY, name="../outside")


def test_a_file_longer_than_its_size_at_open_is_read_to_its_end(monkeypatch):
    """The size comes from fstat; a file that grew after it (or a read that came back short) is read on."""
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    sealed = os.urandom(100_000)
    blob_sealed_put(store=PRIMARY, name=name, sealed=sealed)
    real_fstat = os.fstat

    class Smaller:
        def __init__(self, result: os.stat_result) -> None:
            self.st_size = result.st_size - 40_000

    monkeypatch.setattr(os, "fstat", lambda fd: Smaller(real_fstat(fd)))
    try:
        assert blob_sealed_read(store=PRIMARY, name=name) == sealed
    finally:
        monkeypatch.undo()
        storages[PRIMARY].delete(name)
