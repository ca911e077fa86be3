"""Reads prepared ahead (studies.storage.blobs.blob_reads_prepare, blob_read_prepared), WADO-RS's read of a series:
the same bytes and the same checks as `blob_read_chunks`, the keys opened in the tenant's scope when prepared, a
key that cannot be opened failing that blob alone and only when it is read, and a read that touches no database."""

from __future__ import annotations

import logging
import os

import pytest
from django.core.files.storage import storages
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies.models import Blob
from studies.storage.blobs import (
    PRIMARY,
    BlobUnreadable,
    blob_read_chunks,
    blob_read_prepared,
    blob_reads_prepare,
    blob_seal,
    blob_write,
)
from studies.storage.keys import study_key_cache
from tenants.scoping import TenantScopeError, tenant_scope

pytestmark = pytest.mark.django_db
STUDY = "1.2.826.0.1.3680043.8.498.77"


def _instances(sizes: list[int]) -> list[tuple[Blob, bytes]]:
    """Instance blobs of one study (one study key), with their plaintext."""
    out = []
    for size in sizes:
        data = os.urandom(size)
        out.append((blob_write(kind=Blob.Kind.INSTANCE, data=data, study_instance_uid=STUDY), data))
    return out


def test_prepared_reads_give_the_bytes_of_blob_read_chunks_and_read_no_database(tenant_a):
    with tenant_scope(tenant_a):
        stored = _instances([0, 1, 525_000, (1 << 20) + 5])  # the last: two envelope chunks, read the other way
        prepared = blob_reads_prepare([blob for blob, _ in stored])
        assert [read.blob for read in prepared] == [blob for blob, _ in stored]
        assert [read.path for read in prepared] == [storages[PRIMARY].path(blob.storage_name) for blob, _ in stored]
    with CaptureQueriesContext(connection) as queries:  # outside the scope: a prepared read needs none
        for read, (_, data) in zip(prepared, stored, strict=True):
            assert b"".join(blob_read_prepared(read, lead=b"head")) == b"head" + data
    assert not queries.captured_queries
    with tenant_scope(tenant_a):
        assert [b"".join(blob_read_chunks(blob=blob, lead=b"head")) for blob, _ in stored] == [
            b"head" + data for _, data in stored
        ]


def test_preparing_opens_a_study_key_not_in_the_cache_in_the_tenants_scope_only(tenant_a):
    with tenant_scope(tenant_a):
        (blob, data), *_ = _instances([525_000])
    study_key_cache.clear()
    with pytest.raises(TenantScopeError):
        blob_reads_prepare([blob])  # the study key's row is tenant data: no scope, no key
    with tenant_scope(tenant_a):
        (read,) = blob_reads_prepare([blob])
    assert b"".join(blob_read_prepared(read)) == data


def test_a_key_that_cannot_be_opened_fails_its_blob_alone_when_it_is_read(tenant_a, caplog):
    with tenant_scope(tenant_a):
        stored = _instances([1000, 2000, 3000])
        broken = stored[1][0]
        wrapped = bytearray(broken.wrapped_key)
        wrapped[-1] ^= 0x01
        Blob.objects.filter(pk=broken.pk).update(wrapped_key=bytes(wrapped))
        broken.refresh_from_db()
        blobs = [stored[0][0], broken, stored[2][0]]
        prepared = blob_reads_prepare(blobs)  # recorded, not raised
    assert prepared[1].aead is None
    assert b"".join(blob_read_prepared(prepared[0])) == stored[0][1]
    with caplog.at_level(logging.WARNING, logger="studies.storage.blobs"), pytest.raises(BlobUnreadable):
        blob_read_prepared(prepared[1])
    assert f"blob {broken.public_id}: its key cannot be opened (DecryptionError)" in caplog.text
    assert b"".join(blob_read_prepared(prepared[2])) == stored[2][1]
    with tenant_scope(tenant_a), pytest.raises(BlobUnreadable):
        blob_read_chunks(blob=broken)  # the same failure through the one-blob read


def test_a_damaged_primary_copy_of_a_prepared_read_is_served_from_the_replica(tenant_a, caplog):
    with tenant_scope(tenant_a):
        ((blob, data),) = _instances([525_000])
        (read,) = blob_reads_prepare([blob])
    assert read.path is not None
    with open(read.path, "r+b") as handle:
        handle.seek(300_000)
        byte = handle.read(1)
        handle.seek(300_000)
        handle.write(bytes([byte[0] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="studies.storage.blobs"):
        assert b"".join(blob_read_prepared(read)) == data
    assert f"blob {blob.public_id} unreadable from blobs (DecryptionError)" in caplog.text


def test_a_damaged_copy_in_both_stores_is_unreadable_and_gives_nothing(tenant_a):
    with tenant_scope(tenant_a):
        ((blob, _),) = _instances([525_000])
        (read,) = blob_reads_prepare([blob])
    for store in ("blobs", "replica"):
        path = storages[store].path(blob.storage_name)
        with open(path, "r+b") as handle:
            handle.seek(-20, os.SEEK_END)
            byte = handle.read(1)
            handle.seek(-20, os.SEEK_END)
            handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BlobUnreadable, match="blobs: DecryptionError; replica: DecryptionError"):
        blob_read_prepared(read, lead=b"head")


def test_a_quarantined_blob_is_read_from_the_quarantine_store(tenant_a):
    with tenant_scope(tenant_a):
        data = os.urandom(2000)
        blob = blob_seal(kind=Blob.Kind.QUARANTINE, data=data)
        blob.save()
        (read,) = blob_reads_prepare([blob])
    assert read.path is None  # the primary store's path is not this blob's
    assert b"".join(blob_read_prepared(read)) == data
