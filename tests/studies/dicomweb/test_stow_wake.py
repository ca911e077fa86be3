"""A STOW-RS request waits for verdicts that a worker elsewhere reaches: the request's own message is lost by the
broker (so nothing runs in the request), a thread of this test plays the worker (another database connection,
`ingest_process`), and the request answers from the database once it is woken, or, when the wake-up cannot come
(Redis unreachable), once its fallback poll reads the items again."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from django.test import override_settings

from portal.web.task_context import task_context
from studies import services
from studies.dicom.synthetic import make_study
from studies.models import IngestItem
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import post_parts, referenced
from tests.studies.services.test_ingest import messages_lost_by_the_broker

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/dicomweb/north/studies"


def _worker(tenant_id: int, count: int, done: list[str]) -> None:
    """Once the request's `count` items are recorded, process them as the Celery worker would."""
    try:
        with task_context(tenant_id=tenant_id, principal="enclave:ingest"):
            for _ in range(600):
                waiting = list(IngestItem.objects.filter(state=IngestItem.State.RECEIVED).values_list("pk", flat=True))
                if len(waiting) == count:
                    services.ingest_process(item_id=min(waiting))
                    done.append("processed")
                    return
                time.sleep(0.02)
            done.append("never saw the items")
    finally:
        connection.close()


def _store_with_a_worker_elsewhere(client, tenant) -> tuple[object, list[str]]:
    files = make_study(series=1, instances_per_series=3)
    done: list[str] = []
    thread = threading.Thread(target=_worker, args=(tenant.pk, len(files), done))
    thread.start()
    try:
        with messages_lost_by_the_broker():
            response = post_parts(client, URL, files)
    finally:
        thread.join(30)
    return response, done


@override_settings(DICOMWEB_STOW_WAIT_SECONDS=20)
def test_the_request_answers_with_the_verdicts_of_a_worker_elsewhere(api_client_for, tenant_a, radiologist_a):
    response, done = _store_with_a_worker_elsewhere(api_client_for(radiologist_a, tenant_a), tenant_a)

    assert done == ["processed"]
    assert response.status_code == 200, response.content  # every item stored: no "still processing" warning
    assert len(referenced(response.json())) == 3
    with tenant_scope(tenant_a):
        assert {i.state for i in IngestItem.objects.all()} == {IngestItem.State.STORED}


@override_settings(DICOMWEB_STOW_WAIT_SECONDS=20)
def test_a_lost_wake_up_costs_a_poll_not_the_answer(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    down = {"default": {"BACKEND": "portal.web.cache.EmergencyRedisCache", "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=down):  # the worker's push and the request's wait both fail over
        response, done = _store_with_a_worker_elsewhere(client, tenant_a)

    assert done == ["processed"]
    assert response.status_code == 200, response.content
    assert len(referenced(response.json())) == 3


@override_settings(DICOMWEB_STOW_WAIT_SECONDS=20)
def test_the_request_reads_its_items_once_it_is_woken_not_before(api_client_for, tenant_a, radiologist_a, monkeypatch):
    """No read of the items before the worker's first wake-up (they were just recorded `received`): with a worker
    that decides them in one batch, the request reads them once, and is woken (not timed out: the fallback poll is
    set far longer than the test takes)."""
    from django.test.utils import CaptureQueriesContext

    from studies.dicomweb import stow

    monkeypatch.setattr(stow, "POLL_FALLBACK_SECONDS", 15)
    client = api_client_for(radiologist_a, tenant_a)
    started = time.monotonic()
    with CaptureQueriesContext(connection) as queries:  # the request's connection; the worker's thread has its own
        response, done = _store_with_a_worker_elsewhere(client, tenant_a)

    assert done == ["processed"]
    assert response.status_code == 200, response.content
    assert len(referenced(response.json())) == 3
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('SELECT "studies_ingestitem"')]
    assert len(reads) == 1, reads
    assert time.monotonic() - started < 15  # woken by the worker's push, not by the fallback poll
