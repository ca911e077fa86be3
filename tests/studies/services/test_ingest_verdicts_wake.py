"""The wake-up a STOW-RS request waits on (studies.services.ingest `_verdicts_signal`, `ingest_verdicts_wait`):
the worker pushes it when a request's verdicts commit; the request reads the database either way, so a lost or
unreachable signal only costs it its fallback poll; a signal nobody takes expires. Real services, database and
Redis (Celery eager)."""

from __future__ import annotations

import hashlib
import socket
import uuid

import pytest
from django.core.cache import cache
from django.test import override_settings

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db(transaction=True)  # the task runs when the receipt commits


def _signals(batch: uuid.UUID) -> int:
    client = cache._cache.get_client(write=True)
    return int(client.llen(cache.make_and_validate_key(f"enclave:ingest-verdicts:{batch}")))


def _stow(batch: uuid.UUID, *datas: bytes) -> list[IngestItem]:
    quarantined = [(services.ingest_quarantine(data=data), f"STOW-RS part {n}") for n, data in enumerate(datas, 1)]
    items = services.ingest_receive_many(source=IngestItem.Source.STOWRS, batch=batch, quarantined=quarantined)
    for item in items:
        item.refresh_from_db()
    return items


def test_the_worker_signals_a_stow_request_when_its_verdicts_commit_and_the_wait_takes_it(tenant_a):
    batch = uuid.uuid4()
    with tenant_scope(tenant_a):
        items = _stow(batch, make_instance(), b"not DICOM at all")
        assert [item.state for item in items] == [IngestItem.State.STORED, IngestItem.State.REJECTED]
        assert _signals(batch) == 1  # one push for the batch the worker decided, stored and rejected alike
        services.ingest_verdicts_wait(batch=batch, timeout=5)
        assert _signals(batch) == 0  # the wait took the signal (a sleep would have left it)


def test_a_signal_nobody_takes_expires(tenant_a):
    batch = uuid.uuid4()
    with tenant_scope(tenant_a):
        _stow(batch, make_instance())
        client = cache._cache.get_client(write=True)
        assert _signals(batch) == 1
        assert client.ttl(cache.make_and_validate_key(f"enclave:ingest-verdicts:{batch}")) > 0


def test_doors_that_do_not_wait_get_no_signal(tenant_a):
    batch = uuid.uuid4()
    with tenant_scope(tenant_a):
        item = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=make_instance())
        item.refresh_from_db()
        assert item.state == IngestItem.State.STORED
        assert _signals(batch) == 0


def test_without_a_signal_the_wait_ends_at_its_timeout(tenant_a):
    batch = uuid.uuid4()
    services.ingest_verdicts_wait(batch=batch, timeout=0.05)
    assert _signals(batch) == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_redis_costs_the_signal_not_the_verdict(tenant_a):
    """Redis down: the worker's push is lost (logged, not raised: the item keeps its verdict) and the request's
    wait falls back to sleeping its timeout."""
    location = f"redis://127.0.0.1:{_closed_port()}/0"
    batch = uuid.uuid4()
    with (
        override_settings(
            CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location}}
        ),
        tenant_scope(tenant_a),
    ):
        [item] = _stow(batch, make_instance())
        services.ingest_verdicts_wait(batch=batch, timeout=0.05)
    assert item.state == IngestItem.State.STORED


def test_the_receipt_gives_each_item_its_own_blob_in_one_statement(tenant_a):
    # `_receipts_insert` joins each item to its blob by the blob's public id: a mix-up would hand an item another
    # part's ciphertext. Items rejected by the worker keep their quarantine rows, so the pairing is checked as made.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from studies.models import Blob

    datas = [b"not DICOM %d" % n * (n + 1) for n in range(4)]
    with tenant_scope(tenant_a), CaptureQueriesContext(connection) as queries:
        quarantined = [(services.ingest_quarantine(data=data), f"part {n}") for n, data in enumerate(datas)]
        blobs = [blob for blob, _ in quarantined]
        items = services.ingest_receive_many(
            source=IngestItem.Source.STOWRS, batch=uuid.uuid4(), quarantined=quarantined
        )
        recorded = [q["sql"] for q in queries.captured_queries if 'INSERT INTO "studies_ingestitem"' in q["sql"]]
        assert len(recorded) == 1
        assert [item.quarantine_id for item in items] == [blob.pk for blob in blobs]
        for n, data in enumerate(datas):
            stored = IngestItem.objects.get(filename=f"part {n}")
            assert stored.size == len(data)
            # The row the item points at, read back: the blob sealed from this part's bytes.
            assert Blob.objects.get(pk=stored.quarantine_id).sha256 == hashlib.sha256(data).hexdigest()
