"""RATE_LIMITS (portal.web.limits): one policy, counted in the real Redis, for the sign-in, pages, the API,
DICOMweb and DIMSE (tests/studies/net/test_limits_dimse.py); per person (across tokens and addresses), per token,
per address, per DICOM device. A refusal is a 429 with Retry-After (a problem document for the API and DICOMweb, a
page for pages) or the DIMSE out-of-resources status, and only the first refusal of a window is on the audit trail.

Limits are per day here so that no window can end between two requests of a test. The counters live in Redis for
the whole test run, so each test counts under addresses and people of its own."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from django.test import Client, override_settings

from audit.events import EventType
from audit.models import AuditEvent
from audit.rules import security_rules_evaluate
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import JSON

pytestmark = pytest.mark.django_db


def address() -> str:
    """An address no other test counts under (counters outlive a test: they are Redis keys with their window)."""
    n = random.getrandbits(24)
    return f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"


def limits(**actions: dict[str, str]) -> Any:
    return override_settings(RATE_LIMITS=actions)


def rate_events(tenant) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.RATE_LIMITED).order_by("sequence"))


def platform_rate_events() -> list[AuditEvent]:
    return list(
        AuditEvent.unscoped_objects.filter(event_type=EventType.RATE_LIMITED, tenant__isnull=True).order_by("pk")
    )


# DICOMweb and the API
# ------------------------------------------------------------------------------


def test_a_search_past_the_persons_limit_is_a_429_problem_with_retry_after_audited_once(
    api_client_for, tenant_a, radiologist_a
):
    first, second = api_client_for(radiologist_a, tenant_a), api_client_for(radiologist_a, tenant_a)
    with limits(search={"person": "2/day"}):
        # The limit follows the person across tokens and addresses.
        allowed = [
            first.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=address()).status_code,
            second.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=address()).status_code,
        ]
        refused = [first.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=address()) for _ in range(3)]
    assert allowed == [204, 204]  # no studies: an empty answer
    assert {r.status_code for r in refused} == {429}
    body = refused[0].json()
    assert body["status"] == 429
    assert refused[0]["Content-Type"] == "application/problem+json"
    assert 0 < int(refused[0]["Retry-After"]) <= 86400
    [event] = rate_events(tenant_a)
    assert event.actor_user == radiologist_a
    assert event.extra == {"action": "search", "kind": "person", "limit": "2/day", "door": "DICOMweb"}


def test_a_person_who_reaches_a_limit_raises_one_alert_through_the_rules(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    with limits(search={"person": "1/day"}):
        codes = [client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code for _ in range(4)]
    assert codes == [204, 429, 429, 429]
    with tenant_scope(tenant_a):
        raised = security_rules_evaluate(tenant=tenant_a)
        again = security_rules_evaluate(tenant=tenant_a)
    assert [(a.kind, a.subject, a.severity) for a in raised] == [("rate_limited", "north-radiologist", "warning")]
    assert again == []


def test_a_token_is_limited_on_its_own_and_another_token_goes_on(api_client_for, tenant_a, radiologist_a):
    busy, other = api_client_for(radiologist_a, tenant_a), api_client_for(radiologist_a, tenant_a)
    with limits(search={"token": "1/day"}):
        assert busy.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 204
        assert busy.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 429
        assert other.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 204


def test_an_address_is_limited_whoever_calls_from_it(api_client_for, tenant_a, radiologist_a, technologist_a):
    shared = address()
    with limits(search={"address": "1/day"}):
        assert (
            api_client_for(radiologist_a, tenant_a)
            .get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=shared)
            .status_code
            == 204
        )
        assert (
            api_client_for(technologist_a, tenant_a)
            .get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=shared)
            .status_code
            == 429
        )
        assert (
            api_client_for(technologist_a, tenant_a)
            .get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, REMOTE_ADDR=address())
            .status_code
            == 204
        )


def test_retrieval_has_its_own_budget(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    missing = "/dicomweb/north/studies/1.2.3.4/metadata"
    with limits(search={"person": "1/day"}, retrieve={"person": "1/day"}):
        assert client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 204
        assert client.get(missing, HTTP_ACCEPT=JSON).status_code == 404  # counted, then not found
        assert client.get(missing, HTTP_ACCEPT=JSON).status_code == 429
        assert client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 429


def test_a_non_member_is_limited_on_the_platform_trail_not_the_tenants(api_client_for, tenant_a, tenant_b, outsider_b):
    client = api_client_for(outsider_b, tenant_b)
    before = len(platform_rate_events())
    with limits(search={"person": "1/day"}):
        assert client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 404
        assert client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 429
    assert rate_events(tenant_a) == []
    assert len(platform_rate_events()) == before + 1


def test_apis_without_an_action_are_not_counted(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)
    with limits(search={"person": "1/day", "address": "1/day"}):
        assert {client.get("/api/v1/t/north/tokens/").status_code for _ in range(3)} == {200}


# Pages and the sign-in
# ------------------------------------------------------------------------------


def test_the_study_list_page_past_its_limit_is_a_429_page(client_for, tenant_a, radiologist_a):
    client = client_for(radiologist_a)
    with limits(search={"person": "1/day"}):
        assert client.get("/t/north/studies/").status_code == 200
        refused = client.post("/t/north/studies/", {"patient_name": "SMITH*"})
        again = client.get("/t/north/studies/")
    assert refused.status_code == again.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert b"Too many requests" in refused.content
    assert b"SMITH" not in refused.content
    [event] = rate_events(tenant_a)
    assert event.extra["door"] == "pages"


def test_sign_in_is_limited_per_user_name_and_per_address(db, radiologist_a):
    here = address()
    with limits(login={"person": "2/day", "address": "3/day"}):
        tries = [
            Client(REMOTE_ADDR=here).post("/accounts/login/", {"username": "north-radiologist", "password": "x"})
            for _ in range(3)
        ]
        # Another name from the same address: the address has one try left, then none.
        other_name = [
            Client(REMOTE_ADDR=here).post("/accounts/login/", {"username": "someone-else", "password": "x"})
            for _ in range(2)
        ]
    assert [t.status_code for t in tries] == [200, 200, 429]
    assert [t.status_code for t in other_name] == [200, 429]
    assert int(tries[2]["Retry-After"]) > 0
    assert b"Too many requests" in tries[2].content
    kinds = [e.extra["kind"] for e in platform_rate_events()[-2:]]
    assert kinds == ["person", "address"]


# Counting
# ------------------------------------------------------------------------------


def test_every_kind_is_counted_in_one_redis_round_trip_with_an_expiry(monkeypatch):
    """limit_hit counts person, token and address in one round trip (a Lua script), each counter expiring with
    its window; past a limit the kinds after it are not counted, as before."""
    import redis
    from django.core.cache import cache

    from portal.web.limits import limit_hit

    sent: list[Any] = []
    send = redis.connection.AbstractConnection.send_command

    def counted(self, *args, **kwargs):
        sent.append(args[0])
        return send(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", counted)
    here, person = address(), f"p{random.getrandbits(32)}"
    with limits(search={"person": "2/day", "token": "5/day", "address": "5/day"}):
        assert limit_hit("search", person=person, token="t1", address=here) is None
        assert len(sent) == 1
        assert sent[0] in ("EVALSHA", "EVAL")
        assert limit_hit("search", person=person, token="t1", address=here) is None
        refused = limit_hit("search", person=person, token="t1", address=here)
    assert refused is not None
    assert (refused.kind, refused.first) == ("person", True)
    client = cache._cache.get_client(write=True)
    window = int(time.time() // 86400)
    address_key = cache.make_and_validate_key(f"enclave:rate:search:address:{here}:86400:{window}")
    assert cache.get(f"enclave:rate:search:address:{here}:86400:{window}") == 2  # the refused one not counted
    assert 0 < client.ttl(address_key) <= 86401


def test_the_cache_reuses_one_redis_client_per_connection_pool():
    # Django's client builds a new redis.Redis (and its reply-callback table) for every operation; ours keeps one
    # per pool, so a request's rate-limit checks do not pay for it each time.
    from django.core.cache import cache

    assert cache._cache.get_client(write=True) is cache._cache.get_client(write=True)
    assert cache._cache.get_client(write=True).connection_pool is cache._cache._get_connection_pool(True)


def test_sign_in_counts_a_claimed_name_by_its_digest_whatever_was_typed(db):
    """Any typed name (spaces, control characters, another script, the form's 150 characters) is counted under a
    short key that names nobody, with no cache key warning; case and surrounding blanks make no new name."""
    import warnings

    import redis
    from django.conf import settings
    from django.core.cache import CacheKeyWarning

    names = ["dr  smith\tx", "Ünïcödé-名前", "a" * 150]
    here = [address() for _ in names]
    with limits(login={"person": "1/day"}), warnings.catch_warnings():
        warnings.simplefilter("error", CacheKeyWarning)
        answers = [
            [Client(REMOTE_ADDR=where).post("/accounts/login/", {"username": typed, "password": "x"}).status_code
             for typed in (name, f"  {name.upper()} ")]
            for name, where in zip(names, here, strict=True)
        ]  # fmt: skip
    assert answers == [[200, 429]] * 3
    keys = [key.decode(errors="replace") for key in redis.Redis.from_url(settings.REDIS_URL).keys("*rate:login*")]
    assert keys
    assert all(len(key) < 200 for key in keys)
    assert not [key for key in keys if any(part in key.lower() for part in ("smith", "名前", "aaaa"))]
