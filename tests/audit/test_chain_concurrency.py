"""Concurrent writers keep one tenant's chain whole: the chain head is locked while a writer appends."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from audit.events import EventType
from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from tests.audit.helpers import record
from tests.chains import chain_of

THREADS = 8
EACH = 25


@pytest.mark.django_db(transaction=True)
def test_eight_writers_keep_the_chain_whole_and_gap_free(tenant_a):
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(EACH):
                record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"writer{n}-{i}")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    chain = chain_of(tenant_a)
    total = 1 + THREADS * EACH  # TENANT_CREATED, then every writer's events
    rows = AuditEvent.unscoped_objects.filter(chain=chain).order_by("sequence")
    sequences = list(rows.values_list("sequence", flat=True))
    assert sequences == list(range(1, total + 1))
    assert chain.last_sequence == total
    result = audit_chain_verify(chain=chain)
    assert result.ok, result
    assert result.events == total
