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
