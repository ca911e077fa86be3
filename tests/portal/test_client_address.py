"""The one client-address rule (portal.web.addresses, applied by ClientAddressMiddleware): REMOTE_ADDR, or the
rightmost untrusted hop of the proxy header when the peer is a trusted proxy; the header never reaches anything
else (django-auditlog would believe it)."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent
from portal.web.addresses import client_address_of
from tenants.scoping import tenant_scope

PROXIES = ["192.0.2.0/28", "2001:db8:ffff::/64"]


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"REMOTE_ADDR": "203.0.113.9"}, "203.0.113.9"),
        ({"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}, "203.0.113.9"),  # not a proxy: ignored
        ({"REMOTE_ADDR": "192.0.2.1"}, "192.0.2.1"),  # a proxy without the header is the client itself
        ({"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}, "10.0.0.1"),
        ({"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 10.0.0.1"}, "10.0.0.1"),  # spoofed hop left
        ({"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1, 192.0.2.2"}, "10.0.0.1"),  # two proxies
        ({"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1, junk"}, "192.0.2.1"),  # garbage stops it
        ({"REMOTE_ADDR": "2001:db8:ffff::1", "HTTP_X_FORWARDED_FOR": "2001:db8:1::5"}, "2001:db8:1::5"),
        ({"REMOTE_ADDR": "::ffff:192.0.2.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}, "10.0.0.1"),  # mapped IPv4 peer
    ],
)
def test_the_rule(meta, expected):
    with override_settings(TRUSTED_PROXIES=PROXIES):
        assert client_address_of(meta) == expected


def test_a_configured_header_replaces_x_forwarded_for():
    meta = {"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6", "HTTP_X_REAL_IP": "10.0.0.1"}
    with override_settings(TRUSTED_PROXIES=PROXIES, TRUSTED_PROXY_HEADER="X-Real-IP"):
        assert client_address_of(meta) == "10.0.0.1"


def test_without_trusted_proxies_the_header_is_never_believed():
    with override_settings(TRUSTED_PROXIES=[]):
        assert client_address_of({"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}) == "192.0.2.1"


@pytest.mark.django_db
def test_audit_events_and_auditlog_entries_carry_the_resolved_address(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)
    spoofed = client.post(
        "/api/v1/t/north/networks/", {"network": "10.0.0.0/8"}, format="json",
        REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="6.6.6.6",
    )  # fmt: skip
    assert spoofed.status_code == 201
    with override_settings(TRUSTED_PROXIES=PROXIES):
        proxied = client.post(
            "/api/v1/t/north/networks/", {"network": "10.1.0.0/16"}, format="json",
            REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 10.0.0.7",
        )  # fmt: skip
    assert proxied.status_code == 201
    with tenant_scope(tenant_a):
        added = list(AuditEvent.objects.filter(event_type=EventType.TRUSTED_NETWORK_ADDED).order_by("sequence"))
    assert [e.source_address for e in added] == ["203.0.113.9", "10.0.0.7"]
    entries = LogEntry.objects.filter(content_type__model="trustednetwork").order_by("pk")
    assert [e.remote_addr for e in entries] == ["203.0.113.9", "10.0.0.7"]
