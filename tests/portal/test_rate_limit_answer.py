"""A DICOMweb request's rate limit answered late (portal.web.limits.PolicyThrottle, portal.web.api.TenantApi): the
count is sent to Redis when DRF's throttles run and its answer read only before the request's next statement (a
search), before its handler (every other view), before an error is handled or before the response is made, so the
work in between overlaps the round trip. What a refusal guarantees stays: a request past its limit is a 429 with
Retry-After and runs no statement after the count was sent (no search, no rows, no audit event of a read), the
window's first refusal is on the audit trail, and a Redis that does not answer means "not counted".

Real PostgreSQL, the real Redis (REDIS_URL) and, for the Redis that does not answer, a redis-server of the test's
own, paused."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import cache
from django.db import connection
from django.test import override_settings
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert
from portal.web import cache as cache_module
from portal.web import limits
from portal.web.api import TenantApi
from studies.dicomweb import qido, wado
from tenants.scoping import tenant_scope
from tests.security.test_emergency_mode import RedisServer
from tests.studies.dicomweb.reading import JSON, ingest

pytestmark = pytest.mark.django_db(transaction=True)  # ingestion runs on commit

SENT = "-- the count sent --"


def address() -> str:
    n = random.getrandbits(24)
    return f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"


def events(tenant, event_type: int) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event_type).order_by("sequence"))


@pytest.fixture
def trace(monkeypatch) -> Iterator[list[str]]:
    """What a request did, in order: each statement that ran (its text), and SENT where its count was sent."""
    seen: list[str] = []
    count = limits.request_limit_count

    def counted(*args: Any, **kwargs: Any) -> limits.LimitCount:
        seen.append(SENT)
        return count(*args, **kwargs)

    def ran(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        seen.append(str(sql))
        return execute(sql, params, many, context)

    monkeypatch.setattr(limits, "request_limit_count", counted)
    with connection.execute_wrapper(ran):  # inside the view's own: only statements that ran reach it
        yield seen


def after_sent(seen: list[str]) -> list[str]:
    assert seen.count(SENT) == 1, seen
    return seen[seen.index(SENT) + 1 :]


def test_a_searchs_limit_is_answered_before_its_statement_after_its_parsing(
    api_client_for, tenant_a, radiologist_a, monkeypatch
):
    """The changed behaviour: the answer is read when the search is about to send its statement, after the query
    was parsed; a search under its limit is answered as before."""
    ingest(tenant_a, patient_id="P-LATE", patient_name="LATE^ANSWER", rows=16, columns=16)
    client = api_client_for(radiologist_a, tenant_a)
    order: list[str] = []
    sent = cache_module.EmergencyRedisCache.incr_counters_sent

    def incr_counters_sent(self: Any, counters: Any) -> Any:
        order.append("sent")
        answer = sent(self, counters)

        def read() -> Any:
            order.append("answer read")
            return answer()

        return read

    lookup = qido.attribute_lookup

    def parsed(name: str) -> Any:
        order.append(f"parsed {name}")
        return lookup(name)

    def ran(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        order.append("statement")
        return execute(sql, params, many, context)

    monkeypatch.setattr(cache_module.EmergencyRedisCache, "incr_counters_sent", incr_counters_sent)
    monkeypatch.setattr(qido, "attribute_lookup", parsed)
    with connection.execute_wrapper(ran):
        response = client.get("/dicomweb/north/studies", {"PatientID": "P-LATE"}, HTTP_ACCEPT=JSON)
    assert response.status_code == 200
    assert response.json()[0]["00100020"]["Value"] == ["P-LATE"]
    start = order.index("sent")
    assert order[start : start + 4] == ["sent", "parsed PatientID", "answer read", "statement"], order


def test_a_search_past_its_limit_runs_no_statement_after_the_count_and_the_first_refusal_is_audited(
    api_client_for, tenant_a, radiologist_a, trace
):
    ingest(tenant_a, patient_id="P-LIMIT", patient_name="LIMIT^SEARCH", rows=16, columns=16)
    client = api_client_for(radiologist_a, tenant_a)
    with override_settings(RATE_LIMITS={"search": {"person": "1/day"}}):
        assert client.get("/dicomweb/north/studies", {"PatientID": "P-LIMIT"}, HTTP_ACCEPT=JSON).status_code == 200
        queries = len(events(tenant_a, EventType.STUDIES_QUERIED))
        trace.clear()
        first = client.get("/dicomweb/north/studies", {"PatientID": "P-LIMIT"}, HTTP_ACCEPT=JSON)
        first_statements = after_sent(trace)
        trace.clear()
        again = client.get("/dicomweb/north/studies", {"PatientID": "P-LIMIT"}, HTTP_ACCEPT=JSON)
        again_statements = after_sent(trace)
    for refused in (first, again):
        assert refused.status_code == 429
        assert refused["Content-Type"] == "application/problem+json"
        assert 0 < int(refused["Retry-After"]) <= 86400
        assert b"P-LIMIT" not in refused.content
    assert again_statements == []  # not even the audit trail: the window's refusal is already on it
    # The first refusal: only its own record (the tenant, the membership, the event), no search.
    assert first_statements
    assert not [sql for sql in first_statements if "studies_" in sql], first_statements
    assert len(events(tenant_a, EventType.STUDIES_QUERIED)) == queries
    [event] = events(tenant_a, EventType.RATE_LIMITED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"action": "search", "kind": "person", "limit": "1/day", "door": "DICOMweb"}


def test_a_bad_search_past_its_limit_is_a_429_not_a_400(api_client_for, tenant_a, radiologist_a, trace):
    """The handler raises before any statement (an unknown key): the answer is read before the error is handled."""
    client = api_client_for(radiologist_a, tenant_a)
    with override_settings(RATE_LIMITS={"search": {"token": "1/day"}}):
        assert client.get("/dicomweb/north/studies", {"Nonsense": "1"}, HTTP_ACCEPT=JSON).status_code == 400
        trace.clear()
        refused = client.get("/dicomweb/north/studies", {"Nonsense": "1"}, HTTP_ACCEPT=JSON)
    assert refused.status_code == 429
    assert [sql for sql in after_sent(trace) if "audit_auditevent" in sql and "INSERT" in sql.upper()]  # recorded
    [event] = events(tenant_a, EventType.RATE_LIMITED)
    assert event.extra["kind"] == "token"


def test_a_retrieval_past_its_limit_is_refused_before_its_handler_reads_anything(
    api_client_for, tenant_a, radiologist_a, trace, monkeypatch
):
    study = ingest(tenant_a, patient_id="P-RETRIEVE", frames=1, rows=16, columns=16)
    url = f"/dicomweb/north/studies/{study.study_instance_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    client = api_client_for(radiologist_a, tenant_a)
    handled: list[str] = []
    retrieve = wado._RetrieveApi.retrieve

    def retrieving(self: Any, *args: Any, **kwargs: Any) -> Any:
        handled.append(self.request.path)
        return retrieve(self, *args, **kwargs)

    monkeypatch.setattr(wado._RetrieveApi, "retrieve", retrieving)
    with override_settings(RATE_LIMITS={"retrieve": {"person": "1/day"}}):
        allowed = client.get(url, HTTP_ACCEPT=accept)
        assert allowed.status_code == 200
        b"".join(allowed.streaming_content)
        retrieved = len(events(tenant_a, EventType.INSTANCES_RETRIEVED))
        refused = [client.get(url, HTTP_ACCEPT=accept) for _ in range(2)]
        trace.clear()
        again = client.get(url, HTTP_ACCEPT=accept)
    assert [r.status_code for r in [*refused, again]] == [429, 429, 429]
    assert after_sent(trace) == []
    assert handled == [url]  # the allowed one only
    assert len(events(tenant_a, EventType.INSTANCES_RETRIEVED)) == retrieved
    assert len(events(tenant_a, EventType.RATE_LIMITED)) == 1


class _NoStatementApi(TenantApi):
    """A handler that makes no statement of its own: the answer is read before its response is made."""

    rate_limit = "search"
    RATE_LIMIT_READ_AT_STATEMENT = True
    answered: list[str] = []

    def get(self, request: Any, tenant: str) -> Response:
        self.answered.append(tenant)
        return Response({"made": "no statement"})


def test_a_view_that_makes_no_statement_is_still_refused(api_client_for, tenant_a, radiologist_a, trace):
    token = api_client_for(radiologist_a, tenant_a)._credentials["HTTP_AUTHORIZATION"]
    view = _NoStatementApi.as_view()
    here = address()

    def call() -> Any:
        request = APIRequestFactory().get("/no-statement", HTTP_AUTHORIZATION=token, REMOTE_ADDR=here)
        response = view(request, tenant=tenant_a.slug)
        response.render()
        return response

    with override_settings(RATE_LIMITS={"search": {"address": "1/day"}}):
        allowed = call()
        trace.clear()
        refused = call()
        first_statements = after_sent(trace)
        trace.clear()
        again = call()
    assert allowed.status_code == 200
    assert refused.status_code == again.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert b"no statement" not in refused.content
    assert [sql for sql in first_statements if "INSERT" in sql.upper()]  # the first refusal recorded
    assert after_sent(trace) == []
    [event] = events(tenant_a, EventType.RATE_LIMITED)
    assert event.extra == {"action": "search", "kind": "address", "limit": "1/day", "door": "API"}


def test_a_redis_that_does_not_answer_means_not_counted(api_client_for, tenant_a, radiologist_a, settings, monkeypatch):
    """The count is sent, its answer never comes (the server paused): the wait ends at the cache's timeout, the
    request is not counted and goes on, and the operators are told (emergency mode, portal.web.cache)."""
    ingest(tenant_a, patient_id="P-PAUSED", patient_name="PAUSED^REDIS", rows=16, columns=16)
    client = api_client_for(radiologist_a, tenant_a)
    server = RedisServer()
    try:
        options = {**settings.CACHES["default"].get("OPTIONS", {}), "socket_timeout": 0.5}
        caches = {"default": {**settings.CACHES["default"], "LOCATION": server.url, "OPTIONS": options}}
        with override_settings(CACHES=caches, RATE_LIMITS={"search": {"person": "1/day"}}):
            cache.close()
            # Scripts that write wait while the server is paused for writes; the client's handshake does not.
            redis.Redis.from_url(server.url).client_pause(5000, all=False)
            monkeypatch.setitem(cache_module._state, "alerted_at", -cache_module.ALERT_SECONDS)
            answers = [
                client.get("/dicomweb/north/studies", {"PatientID": "P-PAUSED"}, HTTP_ACCEPT=JSON).status_code
                for _ in range(2)
            ]
            cache.close()
    finally:
        server.stop()
        cache.close()
    assert answers == [200, 200]  # past "1/day" had they been counted
    assert SecurityAlert.unscoped_objects.filter(kind="cache_unavailable").count() == 1


def test_a_request_past_its_limit_from_outside_the_trusted_networks_leaves_the_alert_to_the_next(
    api_client_for, tenant_a, radiologist_a, admin_a
):
    """A refused network's first request from an address raises the alert (a Redis marker per address): a request
    past its rate limit is refused for that before the network check takes the marker, so the next request from the
    address, within its limit, is the 403 that raises the alert."""
    from tenants import services as tenant_services

    with tenant_scope(tenant_a):
        tenant_services.trusted_network_add(actor=admin_a, tenant=tenant_a, network="192.0.2.0/24", label="ward")
    tenant_a.refresh_from_db()
    outside = address()
    limited, fresh = api_client_for(radiologist_a, tenant_a), api_client_for(radiologist_a, tenant_a)
    with override_settings(RATE_LIMITS={"search": {"token": "1/day"}}):
        assert limited.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR="192.0.2.7").status_code == 204
        refused = limited.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=outside)
        assert cache.get(f"enclave:network-refused:{tenant_a.pk}:{outside}") is None
        outside_the_network = fresh.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=outside)
    assert refused.status_code == 429
    assert outside_the_network.status_code == 403
    with tenant_scope(tenant_a):
        assert SecurityAlert.objects.filter(kind="untrusted_network", subject=outside).count() == 1
