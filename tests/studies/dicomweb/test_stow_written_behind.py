"""A STOW-RS request writes each part's quarantined copy on a thread of the pool while it reads, identifies and
encrypts the next part (studies.storage.durable.Behind), and records the parts' receipt only once every copy is
written. A copy that cannot be written fails the request with nothing recorded and no write left running."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from studies.dicom.synthetic import make_study
from studies.models import Blob, IngestItem
from studies.storage import blobs, envelope
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import post_parts, referenced

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/dicomweb/north/studies"


class _Timeline:
    """When each quarantined copy's write began and ended (and on which thread), each encryption began, and the
    receipt's statement ran, on one clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, slow: float = 0.03, fail_at: int | None = None) -> None:
        self.writes: list[tuple[float, float, str]] = []
        self.encryptions: list[float] = []
        self.receipts: list[float] = []
        self.running = 0
        self.lock = threading.Lock()
        real_put, real_encrypt = blobs._file_put, envelope.encrypt_and_hash

        def file_put(*, store: str, **kwargs):
            if store != blobs.QUARANTINE:
                return real_put(store=store, **kwargs)
            with self.lock:
                self.running += 1
                number = len(self.writes) + self.running
            began = time.monotonic()
            try:
                time.sleep(slow)  # a disk that takes its time: the request goes on meanwhile
                if fail_at is not None and number == fail_at:
                    raise OSError(28, "No space left on device")
                return real_put(store=store, **kwargs)
            finally:
                with self.lock:
                    self.running -= 1
                    self.writes.append((began, time.monotonic(), threading.current_thread().name))

        def encrypt_and_hash(*args, **kwargs):
            self.encryptions.append(time.monotonic())
            return real_encrypt(*args, **kwargs)

        monkeypatch.setattr(blobs, "_file_put", file_put)
        monkeypatch.setattr(envelope, "encrypt_and_hash", encrypt_and_hash)

    def sql(self, execute, sql, params, many, context):  # a connection.execute_wrapper
        if "studies_ingestitem" in sql and "INSERT" in sql.upper():
            self.receipts.append(time.monotonic())
        return execute(sql, params, many, context)


def test_the_copies_are_written_on_threads_while_the_next_parts_are_read_and_before_their_receipt(
    api_client_for, tenant_a, radiologist_a, monkeypatch
):
    files = make_study(series=1, instances_per_series=4)
    timeline = _Timeline(monkeypatch)
    client = api_client_for(radiologist_a, tenant_a)

    with connection.execute_wrapper(timeline.sql):
        response = post_parts(client, URL, files)

    assert response.status_code == 200, response.content
    assert len(referenced(response.json())) == 4
    assert len(timeline.writes) == 4
    assert all(thread.startswith("blob-sync") for _, _, thread in timeline.writes)  # not the request's thread
    first_write_ended = min(ended for _, ended, _ in timeline.writes)
    assert timeline.encryptions[1] < first_write_ended  # the second part was encrypted while the first was written
    [receipt] = timeline.receipts
    assert max(ended for _, ended, _ in timeline.writes) < receipt  # every copy written before it is recorded
    with tenant_scope(tenant_a):
        assert IngestItem.objects.filter(state=IngestItem.State.STORED).count() == 4


def test_a_copy_that_cannot_be_written_fails_the_request_with_nothing_recorded_and_no_write_left_running(
    api_client_for, tenant_a, radiologist_a, monkeypatch
):
    files = make_study(series=1, instances_per_series=4)
    timeline = _Timeline(monkeypatch, fail_at=2)
    client = api_client_for(radiologist_a, tenant_a)

    with connection.execute_wrapper(timeline.sql), pytest.raises(OSError, match="No space left on device"):
        post_parts(client, URL, files)  # the test client raises what the server's error page would answer

    assert timeline.running == 0  # every write had ended when the request failed
    assert len(timeline.writes) == 4  # the parts after the failed one were still read and written
    assert timeline.receipts == []
    with tenant_scope(tenant_a):
        assert not IngestItem.objects.exists()
        assert not Blob.objects.exists()


def test_a_copy_larger_than_behind_max_bytes_is_written_at_once_on_the_requests_thread(
    api_client_for, tenant_a, radiologist_a, monkeypatch
):
    """What waits to be written is held in memory: a part over BEHIND_MAX_BYTES is written before the next is read,
    so a request of large parts holds no more than it did."""
    files = make_study(series=1, instances_per_series=2)
    monkeypatch.setattr(blobs, "BEHIND_MAX_BYTES", min(len(data) for data in files) - 1)
    timeline = _Timeline(monkeypatch)
    client = api_client_for(radiologist_a, tenant_a)

    with connection.execute_wrapper(timeline.sql):
        response = post_parts(client, URL, files)

    assert response.status_code == 200, response.content
    assert [thread for _, _, thread in timeline.writes] == [threading.current_thread().name] * 2
