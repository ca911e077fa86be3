"""STOW-RS parts sealed on the process's seal threads (studies.dicomweb.stow `_Sealing`, `_seal_apart`): a part
whose study key the request has opened is sealed on a seal thread while the request reads the next part; the parts
are recorded, answered and refused in their order all the same, and a seal thread makes no database statement."""

from __future__ import annotations

import contextvars
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache
from django.db import connection

from audit.events import EventType
from studies.dicom.synthetic import make_instance, make_study
from studies.dicomweb import stow
from studies.models import IngestItem, Instance
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import (
    FAILURE_REASON,
    REFERENCED_SOP_INSTANCE,
    comment,
    failed,
    post_parts,
    referenced,
    value,
)
from tests.tenants.helpers import events

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/dicomweb/north/studies"


@pytest.fixture
def seal_threads(monkeypatch):
    """The names of the threads each part (by its Study Instance UID and size) was sealed on apart."""
    sealed_on: list[str] = []
    real = stow._seal_apart

    def recorded(**kwargs):
        sealed_on.append(threading.current_thread().name)
        return real(**kwargs)

    monkeypatch.setattr(stow, "_seal_apart", recorded)
    return sealed_on


def test_later_parts_of_a_study_are_sealed_on_seal_threads_and_recorded_in_their_order(
    api_client_for, tenant_a, radiologist_a, seal_threads
):
    first, second = make_study(series=1, instances_per_series=3), make_study(series=1, instances_per_series=2)
    files = [first[0], second[0], first[1], second[1], first[2]]  # two studies, interleaved

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, files)

    assert response.status_code == 200, response.content
    # The first part of each study on the request's thread (its key looked up), the three others apart.
    assert len(seal_threads) == 3
    assert all(name.startswith("stow-seal") for name in seal_threads)
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(response.json())] == [
        stow.identify(f).sop_instance_uid for f in files
    ]
    with tenant_scope(tenant_a):
        received = list(IngestItem.objects.order_by("pk"))
        assert [i.filename for i in received] == [f"STOW-RS part {n}" for n in range(1, 6)]
        assert [i.sha256 for i in received] == [hashlib.sha256(f).hexdigest() for f in files]
        assert {i.state for i in received} == {IngestItem.State.STORED}
        stored = {i.sop_instance_uid: i.sha256 for i in Instance.objects.all()}
    assert stored == {stow.identify(f).sop_instance_uid: hashlib.sha256(f).hexdigest() for f in files}


def _quota_counters_cleared(tenant: Tenant) -> None:
    now = time.time()
    for period in (3600, 86400):
        cache.delete(f"enclave:ingest-quota:{tenant.pk}:{period}:{int(now // period)}")


def test_a_part_the_quota_refuses_on_a_seal_thread_is_refused_in_its_place(
    api_client_for, tenant_a, radiologist_a, seal_threads
):
    files = make_study(series=1, instances_per_series=4)
    Tenant.objects.filter(pk=tenant_a.pk).update(ingest_quota_bytes_per_day=sum(map(len, files[:2])) + 10)
    _quota_counters_cleared(tenant_a)
    try:
        response = post_parts(api_client_for(radiologist_a, tenant_a), URL, files)
    finally:
        _quota_counters_cleared(tenant_a)

    assert response.status_code == 202, response.content
    assert len(seal_threads) == 1  # part 2 sealed apart; 3 and 4 refused by the quota, in their order, unsealed
    body = response.json()
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(body)] == [
        stow.identify(f).sop_instance_uid for f in files[:2]
    ]
    refused = failed(body)
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in refused] == [
        stow.identify(f).sop_instance_uid for f in files[2:]
    ]
    assert {value(r, FAILURE_REASON) for r in refused} == {stow.FAILURE_OUT_OF_RESOURCES}
    assert all("ingestion quota" in comment(r) for r in refused)
    with tenant_scope(tenant_a):
        assert [i.filename for i in IngestItem.objects.order_by("pk")] == ["STOW-RS part 1", "STOW-RS part 2"]
    assert sorted(e.extra["door"]["part"] for e in events(tenant_a, EventType.INGEST_REJECTED)) == [3, 4]


def test_a_seal_thread_makes_no_statement_and_keeps_no_connection(tenant_a):
    """A part whose key is not open would need the database: on a seal thread that is refused, loudly, and the
    connection its attempt opened is closed."""
    data = make_instance()
    hint = stow.identify(data).study_instance_uid
    opened: list[bool] = []

    def apart():
        try:
            return stow._seal_apart(data=data, hint=hint, study_keys={})
        finally:
            opened.append(connection.connection is not None)

    with tenant_scope(tenant_a), ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(contextvars.copy_context().run, apart)
        with pytest.raises(RuntimeError, match="makes no database statement"):
            future.result()
    assert opened == [False]
