"""/health/ (SECURITY.md E8): PostgreSQL and Redis reachability and the offset between the application's clock and
PostgreSQL's, for load balancers, without credentials and without tenant data. Past the offset limit the probe
fails (503) and raises one SecurityAlert per interval on the platform's trail; an unreachable Redis is a 503 too."""

from __future__ import annotations

import socket
import time

import pytest
from django.test import Client, override_settings

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from portal.web.health import CLOCK_ALERT_KIND, health_check

pytestmark = pytest.mark.django_db

KEYS = {"status", "database", "redis", "clock", "clock_offset_seconds", "clock_offset_limit_seconds"}


def clock_alerts() -> list[SecurityAlert]:
    # With their events: the platform chain's rows, read in the platform scope of `unscoped_objects`.
    return list(SecurityAlert.unscoped_objects.filter(kind=CLOCK_ALERT_KIND).select_related("event"))


def test_a_healthy_node_answers_200_with_its_clock_offset_and_no_tenant_data(tenant_a, radiologist_a):
    response = Client().get("/health/")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == KEYS
    assert (body["status"], body["database"], body["redis"], body["clock"]) == ("ok", "ok", "ok", "ok")
    assert abs(body["clock_offset_seconds"]) < 1.0  # app and database share this machine's clock
    assert body["clock_offset_limit_seconds"] == 1.0
    assert response["Cache-Control"] == "no-store"
    assert b"north" not in response.content
    assert radiologist_a.username.encode() not in response.content
    assert clock_alerts() == []


def test_the_offset_is_the_application_clock_against_postgres():
    ahead = health_check(clock=lambda: time.time() + 5.0)
    assert 4.5 < ahead.clock_offset < 5.5
    assert not ahead.clock_ok
    assert not ahead.ok
    behind = health_check(clock=lambda: time.time() - 3.0)
    assert -3.5 < behind.clock_offset < -2.5
    [alert] = clock_alerts()  # two bad checks within the interval: one alert
    assert 4.5 < alert.event.extra["offset_seconds"] < 5.5
    assert "clock is +4.9" in alert.summary or "clock is +5.0" in alert.summary


@override_settings(HEALTH_CLOCK_MAX_OFFSET_SECONDS=1e-9)
def test_an_offset_past_the_limit_is_503_and_one_security_alert():
    first = Client().get("/health/")
    assert first.status_code == 503
    body = first.json()
    assert (body["status"], body["clock"], body["database"], body["redis"]) == ("fail", "off", "ok", "ok")
    assert Client().get("/health/").status_code == 503

    [alert] = clock_alerts()
    assert alert.tenant is None
    assert alert.severity == SecurityAlert.Severity.HIGH
    event = alert.event
    assert event.event_type == EventType.CLOCK_OFFSET_EXCEEDED
    assert event.event_id == "110113"
    assert event.outcome == Outcome.SERIOUS_FAILURE
    assert event.system_principal == "enclave:health"
    assert event.extra["limit_seconds"] == 1e-9
    assert AuditEvent.unscoped_objects.filter(event_type=EventType.CLOCK_OFFSET_EXCEEDED).count() == 1


@override_settings(HEALTH_CLOCK_MAX_OFFSET_SECONDS=1e-9, HEALTH_ALERT_INTERVAL_SECONDS=0)
def test_a_new_interval_raises_a_new_alert():
    Client().get("/health/")
    time.sleep(0.01)
    Client().get("/health/")
    assert len(clock_alerts()) == 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_redis_is_503():
    location = f"redis://127.0.0.1:{_closed_port()}/0"
    with override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                               "LOCATION": location}}):  # fmt: skip
        response = Client().get("/health/")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["redis"], body["database"], body["clock"]) == ("fail", "unreachable", "ok", "ok")
    assert clock_alerts() == []


# The OpenAPI schema documents /health/ (a plain Django view, added by portal.web.schema.health_path_add)
# ------------------------------------------------------------------------------


def _served_schema(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_lists_health_as_an_unauthenticated_probe_without_tenant_data(tenant_a, radiologist_a, client_for):
    from openapi_spec_validator import validate

    schema = _served_schema(client_for(radiologist_a))
    validate(schema)  # still a valid OpenAPI document with the added path
    operation = schema["paths"]["/health/"]["get"]
    assert set(schema["paths"]["/health/"]) == {"get"}
    assert operation["operationId"] == "health"
    assert operation["security"] == [{}]  # no credentials
    assert "no patient data" in operation["summary"]
    assert set(operation["responses"]) == {"200", "503"}
    body = schema["components"]["schemas"]["Health"]
    assert set(body["properties"]) == set(body["required"]) == KEYS
    assert body["additionalProperties"] is False  # nothing else (nothing of a tenant) may appear in the answer
    # the paths every tenant operation has stay as they were
    assert any(path.startswith("/api/v1/t/{tenant}/") for path in schema["paths"])


def test_what_health_answers_is_what_the_schema_documents(radiologist_a, client_for):
    from openapi_schema_validator import OAS30Validator

    schema = _served_schema(client_for(radiologist_a))
    operation = schema["paths"]["/health/"]["get"]
    validator = OAS30Validator(schema["components"]["schemas"]["Health"])
    healthy = Client().get("/health/")
    assert healthy.status_code == 200
    validator.validate(healthy.json())
    assert healthy["Cache-Control"] in operation["responses"]["200"]["headers"]["Cache-Control"]["schema"]["enum"]
    # a node whose clock is off and whose database did not answer: the 503's bodies validate too
    validator.validate(health_check(clock=lambda: time.time() + 5.0).as_dict())
    unmeasured = health_check().as_dict() | {"status": "fail", "database": "unreachable", "clock": "unknown"}
    validator.validate(unmeasured | {"clock_offset_seconds": None})
    with pytest.raises(Exception, match="tenant"):
        validator.validate(healthy.json() | {"tenant": "north"})
