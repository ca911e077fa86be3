"""A folder store's copy mapped from the page cache for a read that decrypts it at once (studies.storage.blobs.
blob_sealed_mapped, WADO-RS's per-instance read): the file's bytes, every page read in before the decryption (a
page that cannot be read is an OSError and the replica is served), unmapped once the plaintext is made, and
read as before where mapping is not possible."""

from __future__ import annotations

import logging
import mmap
import os
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import storages

from studies.models import Blob
from studies.storage import blobs
from studies.storage.blobs import PRIMARY, blob_read, blob_read_chunks, blob_sealed_mapped, blob_sealed_put, blob_write
from tenants.scoping import tenant_scope


def _mapped_paths() -> set[str]:
    fields = (line.split(maxsplit=5) for line in Path("/proc/self/maps").read_text().splitlines())
    return {parts[5] for parts in fields if len(parts) == 6}


@pytest.fixture
def mapping_on():
    blobs._mapping["usable"] = True
    yield
    blobs._mapping["usable"] = True


def test_a_mapped_copy_is_the_files_bytes_and_goes_with_its_last_reference(mapping_on):
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    sealed = os.urandom(525_000)
    blob_sealed_put(store=PRIMARY, name=name, sealed=sealed)
    path = storages[PRIMARY].path(name)
    try:
        view = blob_sealed_mapped(store=PRIMARY, name=name)
        assert view is not None
        assert view == sealed
        assert path in _mapped_paths()
        del view
        assert path not in _mapped_paths()  # unmapped at once, not at some later collection
    finally:
        storages[PRIMARY].delete(name)


def test_a_missing_copy_is_an_oserror_a_name_outside_the_store_is_refused_an_empty_one_is_read(mapping_on):
    with pytest.raises(FileNotFoundError):
        blob_sealed_mapped(store=PRIMARY, name=f"t0/test/{uuid.uuid4().hex}")
    with pytest.raises(SuspiciousFileOperation):
        blob_sealed_mapped(store=PRIMARY, name="../outside")
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    blob_sealed_put(store=PRIMARY, name=name, sealed=b"")
    try:
        assert blob_sealed_mapped(store=PRIMARY, name=name) is None  # an empty file cannot be mapped: read it
    finally:
        storages[PRIMARY].delete(name)


@pytest.mark.django_db
def test_a_read_leaves_nothing_mapped(tenant_a, mapping_on):
    with tenant_scope(tenant_a):
        data = os.urandom((1 << 20) + 4321)  # two envelope chunks
        blob = blob_write(kind=Blob.Kind.EXPORT, data=data)
        path = storages[PRIMARY].path(blob.storage_name)
        assert b"".join(blob_read_chunks(blob=blob)) == data
    assert path not in _mapped_paths()


@pytest.mark.django_db
def test_a_copy_whose_pages_cannot_be_read_is_a_failed_copy_and_the_replica_is_served(
    tenant_a, mapping_on, monkeypatch, caplog
):
    """The kernel's own refusal, on a copy cut short after it was mapped: MADV_POPULATE_READ fails with EFAULT
    where touching the missing pages would have raised SIGBUS in the decryption."""
    real_mmap = mmap.mmap

    def mapped_then_cut(fd: int, length: int, **kwargs: object) -> mmap.mmap:
        mapping = real_mmap(fd, length, **kwargs)
        if os.readlink(f"/proc/self/fd/{fd}") == primary:
            os.truncate(primary, 4096)
        return mapping

    with tenant_scope(tenant_a):
        data = os.urandom((1 << 20) + 300_000)  # two chunks, larger than a read's buffer: mapped
        blob = blob_write(kind=Blob.Kind.EXPORT, data=data)
        primary = storages[PRIMARY].path(blob.storage_name)
        monkeypatch.setattr(mmap, "mmap", mapped_then_cut)
        with caplog.at_level(logging.WARNING, logger="studies.storage.blobs"):
            assert b"".join(blob_read_chunks(blob=blob)) == data
    assert os.path.getsize(primary) == 4096  # the primary copy was cut: the bytes came from the replica
    assert f"blob {blob.public_id} unreadable from blobs (OSError)" in caplog.text
    assert blobs._mapping["usable"]  # a failed copy is no reason to stop mapping the others


@pytest.mark.django_db
def test_a_kernel_without_populate_read_has_its_copies_read_instead(tenant_a, mapping_on, monkeypatch):
    monkeypatch.setattr(blobs, "MADV_POPULATE_READ", 0x7FFF)  # an advice the kernel does not know: EINVAL
    with tenant_scope(tenant_a):
        data = os.urandom((1 << 20) + 200_000)  # larger than a read's buffer (blobs.READ_BUFFER_BYTES): mapped
        blob = blob_write(kind=Blob.Kind.EXPORT, data=data)
        assert blob_read(blob=blob) == data
    assert not blobs._mapping["usable"]
    assert blob_sealed_mapped(store=PRIMARY, name=blob.storage_name) is None
