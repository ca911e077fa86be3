"""Failed bearer tokens are limited per client address (SECURITY.md G11, RATE_LIMITS["bad_token"]): past the limit,
every token from that address is a 429 with Retry-After for the rest of the window, a valid one included, on the
API and DICOMweb alike; other addresses are not affected; the first refusal of the window is a RATE_LIMITED
security event on the platform's trail, the later ones are not.

Limits are per day here so that no window ends inside a test; each test counts under addresses of its own (the
counters are Redis keys that outlive a test)."""

from __future__ import annotations

import random

import pytest
from django.test import Client, override_settings

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from portal.settings import base
from portal.web.limits import rate_parse

pytestmark = pytest.mark.django_db

MEMBERS = "/api/v1/t/north/members/"
STUDIES = "/dicomweb/north/studies"


def address() -> str:
    n = random.getrandbits(24)
    return f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"


def bad(n: int) -> str:
    return "enc_" + f"{n:04d}" + "x" * 39


def platform_events() -> list[AuditEvent]:
    return list(
        AuditEvent.unscoped_objects.filter(
            event_type=EventType.RATE_LIMITED, tenant__isnull=True, extra__door="bearer token"
        ).order_by("pk")
    )


def get(path: str, token: str, addr: str):
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {token}", REMOTE_ADDR=addr)


def test_the_production_policy_limits_bad_tokens_per_address():
    count, period = rate_parse(base.RATE_LIMITS["bad_token"]["address"])
    assert 0 < count <= 100
    assert period <= 3600


@override_settings(RATE_LIMITS={"bad_token": {"address": "3/day"}})
def test_past_the_limit_every_token_from_the_address_is_429_a_valid_one_included(api_client_for, tenant_a, admin_a):
    valid = api_client_for(admin_a, tenant_a)._credentials["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    here, elsewhere = address(), address()
    assert get(MEMBERS, valid, here).status_code == 200

    first = [get(MEMBERS, bad(i), here).status_code for i in range(3)]
    assert first == [401, 401, 401]
    assert platform_events() == []

    refused = get(MEMBERS, bad(3), here)
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/problem+json"
    assert refused.json()["status"] == 429
    assert 0 < int(refused["Retry-After"]) <= 86400

    with_valid = get(MEMBERS, valid, here)
    assert with_valid.status_code == 429
    assert admin_a.username.encode() not in with_valid.content
    assert int(with_valid["Retry-After"]) > 0
    assert get(STUDIES, valid, here).status_code == 429  # DICOMweb too
    assert get(MEMBERS, bad(4), here).status_code == 429

    assert get(MEMBERS, valid, elsewhere).status_code == 200  # another address is not affected
    assert get(MEMBERS, bad(5), elsewhere).status_code == 401

    [event] = platform_events()
    assert event.outcome == Outcome.MINOR_FAILURE
    assert event.event_id == "110113"  # Security Alert
    assert event.extra == {"action": "bad_token", "kind": "address", "limit": "3/day", "door": "bearer token"}
    assert event.source_address == here


@override_settings(RATE_LIMITS={"bad_token": {"address": "2/day"}})
def test_refused_device_tokens_count_and_valid_tokens_do_not(api_client_for, tenant_a, admin_a):
    valid = api_client_for(admin_a, tenant_a)._credentials["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    here = address()
    assert [get(MEMBERS, valid, here).status_code for _ in range(5)] == [200] * 5  # successes never count
    assert get(MEMBERS, "encd_" + "y" * 43, here).status_code == 401
    assert get(MEMBERS, "ence_" + "z" * 43, here).status_code == 401
    assert get(MEMBERS, "encd_" + "w" * 43, here).status_code == 429
    assert get(MEMBERS, valid, here).status_code == 429
    assert len(platform_events()) == 1


def test_without_a_policy_for_bad_tokens_nothing_is_limited(api_client_for, tenant_a, admin_a):
    here = address()
    with override_settings(RATE_LIMITS={}):
        assert {get(MEMBERS, bad(i), here).status_code for i in range(30)} == {401}
