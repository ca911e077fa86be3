"""BlobReadAhead (studies.storage.blobs), WADO-RS's reads of a series made on a thread of their own ahead of the part
being written (issue 10): the same bytes and checks as `blob_read_prepared`, in order; a damaged blob raised when its
turn comes, not before; a fixed number of buffers whatever the number of blobs; no thread left once closed."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from audit.context import audit_context
from portal.log_filters import RequestIdFilter
from studies.models import Blob
from studies.storage import blobs as blobs_module
from studies.storage.blobs import (
    PRIMARY,
    READ_AHEAD,
    REPLICA,
    BlobReadAhead,
    BlobUnreadable,
    blob_read_prepared,
    blob_reads_prepare,
    blob_sealed_put,
    blob_sealed_read,
    blob_write,
)
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db
STUDY = "1.2.826.0.1.3680043.8.498.78"


def _ahead_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "blob-read-ahead"]


def _stored(tenant, sizes: list[int]) -> list[tuple[Blob, bytes]]:
    with tenant_scope(tenant):
        out = []
        for size in sizes:
            data = os.urandom(size)
            out.append((blob_write(kind=Blob.Kind.INSTANCE, data=data, study_instance_uid=STUDY), data))
        return out


def _damage(tenant, blob: Blob) -> None:
    with tenant_scope(tenant):
        for store in (PRIMARY, REPLICA):
            sealed = bytearray(blob_sealed_read(store=store, name=blob.storage_name))
            sealed[-20] ^= 0x01
            blob_sealed_put(store=store, name=blob.storage_name, sealed=bytes(sealed))


def _read_in_turn(ahead: BlobReadAhead, reads, *, leads=None):
    """As the WADO-RS body takes them: `depth` submitted, then take one, submit the next, use what was taken."""
    leads = leads or [b""] * len(reads)
    got, queued = [], iter(zip(reads, leads, strict=True))
    for read, lead in queued:
        ahead.submit(read, lead=lead)
        if ahead.pending == READ_AHEAD:
            break
    while ahead.pending:
        chunks = ahead.result()
        for read, lead in queued:
            ahead.submit(read, lead=lead)
            break
        got.append(b"".join(bytes(c) for c in chunks))  # written out before the next is taken
    return got


@pytest.mark.parametrize("views", [False, True])
def test_reads_ahead_give_each_blob_in_order_with_its_lead(tenant_a, views):
    stored = _stored(tenant_a, [525_000, 1, 600_000, (1 << 20) + 5, 525_001, 0, 700_000])
    with tenant_scope(tenant_a):
        reads = blob_reads_prepare([blob for blob, _ in stored])
    leads = [f"head {n}".encode() for n in range(len(stored))]
    ahead = BlobReadAhead(views=views)
    try:
        expected = [lead + data for lead, (_, data) in zip(leads, stored, strict=True)]
        assert _read_in_turn(ahead, reads, leads=leads) == expected
    finally:
        ahead.close()
    assert not _ahead_threads()


def test_a_one_chunk_blob_is_a_view_of_one_of_a_fixed_set_of_buffers_used_in_turn(tenant_a):
    """Memory stays flat: however many blobs, the views come from READ_AHEAD + 1 buffers, each view left intact
    until the second submit after it was taken (the next part's read never overwrites the part being written)."""
    stored = _stored(tenant_a, [300_000 + n for n in range(12)])
    with tenant_scope(tenant_a):
        reads = blob_reads_prepare([blob for blob, _ in stored])
    ahead = BlobReadAhead(views=True)
    buffers = set()
    try:
        for read in reads[:READ_AHEAD]:
            ahead.submit(read)
        for n in range(len(stored)):
            (view,) = ahead.result()
            assert type(view) is memoryview
            buffers.add(id(view.obj))
            if n + READ_AHEAD < len(reads):
                ahead.submit(reads[n + READ_AHEAD])
            assert bytes(view) == stored[n][1]  # still intact after the next submit
        for read in reads[:READ_AHEAD]:
            ahead.submit(read)
        with pytest.raises(RuntimeError):
            ahead.submit(reads[0])  # never more than READ_AHEAD reads waiting to be taken
    finally:
        ahead.close()
    assert len(buffers) == READ_AHEAD + 1


@pytest.mark.parametrize("views", [False, True])
def test_a_damaged_blob_raises_in_its_turn_after_the_blobs_before_it(tenant_a, views):
    stored = _stored(tenant_a, [525_000, 525_001, 525_002, 525_003, 525_004])
    _damage(tenant_a, stored[2][0])
    with tenant_scope(tenant_a):
        reads = blob_reads_prepare([blob for blob, _ in stored])
    ahead = BlobReadAhead(views=views)
    taken = []
    try:
        for read in reads[:READ_AHEAD]:
            ahead.submit(read)
        for n in range(2):
            chunks = ahead.result()
            ahead.submit(reads[n + READ_AHEAD])  # the damaged one is read while this one is written
            taken.append(b"".join(bytes(c) for c in chunks))
        with pytest.raises(BlobUnreadable):
            ahead.result()  # the damaged one raises here, in its turn
    finally:
        ahead.close()
    assert taken == [stored[0][1], stored[1][1]]
    assert not _ahead_threads()


def test_closing_part_way_stops_the_thread_and_skips_the_reads_not_started(tenant_a):
    stored = _stored(tenant_a, [525_000] * 4)
    with tenant_scope(tenant_a):
        reads = blob_reads_prepare([blob for blob, _ in stored])
    ahead = BlobReadAhead(views=True)
    ahead.submit(reads[0])
    ahead.submit(reads[1])
    assert _ahead_threads()
    assert bytes(ahead.result()[0]) == stored[0][1]
    ahead.close()  # the client went away with one read taken and one waiting
    assert not _ahead_threads()
    ahead.close()  # idempotent
    with pytest.raises(RuntimeError):
        ahead.submit(reads[2])


class _Kept(logging.Handler):
    """Keeps the records it handles, with the project's RequestIdFilter applied as they are emitted (on the
    emitting thread, as the deployed handlers apply it)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_damaged_copy_read_ahead_is_logged_with_the_requests_id(tenant_a):
    """The thread runs in a copy of the caller's context: the warning of a copy that failed its checks names the
    request it was read for (portal.log_filters.RequestIdFilter reads the audit context), as on the caller's own
    thread."""
    (blob, _), *_ = _stored(tenant_a, [4096])
    with tenant_scope(tenant_a):
        sealed = bytearray(blob_sealed_read(store=PRIMARY, name=blob.storage_name))
        sealed[-20] ^= 0x01
        blob_sealed_put(store=PRIMARY, name=blob.storage_name, sealed=bytes(sealed))
        (read,) = blob_reads_prepare([blob])
    kept = _Kept()
    blobs_module.logger.addHandler(kept)
    try:
        with audit_context(request_id="req-read-ahead-1"):
            ahead = BlobReadAhead()
            try:
                ahead.submit(read)
                ahead.result()
            finally:
                ahead.close()
    finally:
        blobs_module.logger.removeHandler(kept)
    (record,) = [r for r in kept.records if str(blob.public_id) in r.getMessage()]
    assert record.threadName == "blob-read-ahead"
    assert record.request_id == "req-read-ahead-1"


def test_a_read_ahead_reads_what_blob_read_prepared_reads(tenant_a):
    """The same copies and checks: a primary damaged in its last chunk is read whole from the replica."""
    (blob, data), *_ = _stored(tenant_a, [(1 << 20) + 7])
    with tenant_scope(tenant_a):
        sealed = bytearray(blob_sealed_read(store=PRIMARY, name=blob.storage_name))
        sealed[-20] ^= 0x01
        blob_sealed_put(store=PRIMARY, name=blob.storage_name, sealed=bytes(sealed))
        (read,) = blob_reads_prepare([blob])
    ahead = BlobReadAhead()
    try:
        ahead.submit(read)
        assert b"".join(ahead.result()) == data == b"".join(blob_read_prepared(read))
    finally:
        ahead.close()


def test_a_read_ahead_made_before_the_last_one_of_its_thread_is_closed_reads_into_buffers_of_its_own(tenant_a):
    """A thread's buffers serve one read-ahead at a time: one made while another of the same thread is still open
    (an answer dropped before the server took it, its first reads started: studies.dicomweb.wado) never writes into
    the views the other has handed out; once both are closed, the next reuses the thread's buffers again."""
    stored = _stored(tenant_a, [300_000 + n for n in range(5)])
    with tenant_scope(tenant_a):
        reads = blob_reads_prepare([blob for blob, _ in stored])
    first, second = BlobReadAhead(views=True), BlobReadAhead(views=True)
    try:
        first.submit(reads[0])
        (view,) = first.result()
        assert _read_in_turn(second, reads[1:]) == [data for _, data in stored[1:]]
        assert bytes(view) == stored[0][1]  # intact: the second read into other buffers
    finally:
        second.close()
        first.close()
    third = BlobReadAhead(views=True)
    try:
        third.submit(reads[0])
        (again,) = third.result()
        assert again.obj is view.obj  # the thread's buffers, given back by the first one closed on this thread
    finally:
        third.close()
    assert not _ahead_threads()
