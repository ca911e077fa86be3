"""Trusted networks (issue 14): a tenant's address ranges, kept by its administrators on a page and through the
API, and enforced on its pages, API and DICOMweb before anything is read (the DICOM listener: tests/studies/net/
test_trusted_networks_dimse.py). The client address comes from REMOTE_ADDR, or from the proxy header only when the
peer is a trusted proxy (tests/portal/test_client_address.py for the rule itself)."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert
from tenants import access, services
from tenants.models import Tenant, TrustedNetwork, network_parse
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import JSON, ingest

pytestmark = pytest.mark.django_db

API = "/api/v1/t/north/networks/"


def events(tenant: Tenant, event: EventType) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=event).order_by("sequence"))


def add(tenant: Tenant, admin, network: str, label: str = "") -> TrustedNetwork:
    with tenant_scope(tenant):
        return services.trusted_network_add(actor=admin, tenant=tenant, network=network, label=label)


# The range itself
# ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("10.20.0.0/16", "10.20.0.0/16"), (" 192.168.1.7 ", "192.168.1.7/32"), ("2001:DB8:5::/48", "2001:db8:5::/48")],
)
def test_ranges_are_kept_in_their_canonical_form(text, canonical):
    assert str(network_parse(text)) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.20.0.0/33", "not an IPv4 or IPv6 address range"),
        ("north-site", "not an IPv4 or IPv6 address range"),
        ("", "not an IPv4 or IPv6 address range"),
        ("10.20.3.4/16", "did you mean 10.20.0.0/16"),
    ],
)
def test_a_bad_range_is_refused_with_its_reason(text, reason):
    with pytest.raises(ValidationError, match=reason):
        network_parse(text)


def test_no_range_means_any_address_and_ranges_mean_only_those(tenant_a, admin_a):
    assert access.network_allows(tenant_a, "203.0.113.9")
    add(tenant_a, admin_a, "10.20.0.0/16")
    add(tenant_a, admin_a, "2001:db8:5::/48")
    assert access.network_allows(tenant_a, "10.20.255.1")
    assert access.network_allows(tenant_a, "::ffff:10.20.0.1")  # an IPv4 peer on a dual-stack socket
    assert access.network_allows(tenant_a, "2001:db8:5:1::7")
    assert not access.network_allows(tenant_a, "10.21.0.1")
    assert not access.network_allows(tenant_a, "2001:db8:6::1")
    assert not access.network_allows(tenant_a, None)
    assert not access.network_allows(tenant_a, "not-an-address")


def test_one_tenants_ranges_do_not_close_another(tenant_a, tenant_b, admin_a):
    add(tenant_a, admin_a, "10.20.0.0/16")
    assert access.network_allows(tenant_b, "203.0.113.9")


# The API
# ------------------------------------------------------------------------------


def test_an_admin_adds_lists_and_removes_a_range_each_change_audited(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)

    created = client.post(API, {"network": "127.0.0.0/8", "label": "this site"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["network"] == "127.0.0.0/8"
    listed = client.get(API)
    assert [row["network"] for row in listed.json()["results"]] == ["127.0.0.0/8"]
    removed = client.delete(f"{API}{created.json()['id']}/")
    assert removed.status_code == 204

    added, gone = events(tenant_a, EventType.TRUSTED_NETWORK_ADDED), events(tenant_a, EventType.TRUSTED_NETWORK_REMOVED)
    assert [e.extra["network"] for e in added] == ["127.0.0.0/8"]
    assert [e.extra["network"] for e in gone] == ["127.0.0.0/8"]
    assert added[0].actor_user == admin_a
    # django-auditlog records the row's creation and deletion too.
    assert LogEntry.objects.filter(content_type__model="trustednetwork").count() == 2
    with tenant_scope(tenant_a):
        assert not TrustedNetwork.objects.exists()


@pytest.mark.parametrize(
    ("body", "reason"),
    [({"network": "10.0.0.1/8"}, "host bits set"), ({"network": "10.0.0.0/40"}, "not an IPv4 or IPv6"), ({}, "")],
)
def test_a_bad_range_is_a_400_with_its_reason_and_nothing_saved(api_client_for, tenant_a, admin_a, body, reason):
    response = api_client_for(admin_a, tenant_a).post(API, body, format="json")
    assert response.status_code == 400
    assert "network" in response.json()["errors"]
    assert reason in " ".join(response.json()["errors"]["network"])
    with tenant_scope(tenant_a):
        assert not TrustedNetwork.objects.exists()
    assert events(tenant_a, EventType.TRUSTED_NETWORK_ADDED) == []


def test_the_same_range_twice_is_a_400(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)
    assert client.post(API, {"network": "127.0.0.0/8"}, format="json").status_code == 201
    again = client.post(API, {"network": "127.0.0.0/8"}, format="json")
    assert again.status_code == 400


def test_a_member_without_the_permission_is_refused_and_it_is_recorded(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    assert client.get(API).status_code == 403
    assert client.post(API, {"network": "10.0.0.0/8"}, format="json").status_code == 403
    refusals = events(tenant_a, EventType.ACCESS_DENIED)
    assert len(refusals) == 2
    assert {e.extra["where"] for e in refusals} == {"TrustedNetworkListApi", "TrustedNetworkCreateApi"}
    with tenant_scope(tenant_a):
        assert not TrustedNetwork.objects.exists()


def test_another_tenants_range_is_a_404_like_a_missing_one(api_client_for, tenant_a, tenant_b, admin_a, admin_b):
    theirs = add(tenant_b, admin_b, "10.9.0.0/16")
    client = api_client_for(admin_a, tenant_a)
    foreign = client.delete(f"{API}{theirs.public_id}/")
    missing = client.delete(f"{API}00000000-0000-4000-8000-000000000000/")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    # And tenant B's admin cannot reach tenant A's list at all.
    assert api_client_for(admin_b, tenant_b).get(API).status_code == 404
    with tenant_scope(tenant_b):
        assert TrustedNetwork.objects.filter(pk=theirs.pk).exists()


# The page
# ------------------------------------------------------------------------------


def test_the_page_adds_and_removes_ranges(client_for, tenant_a, admin_a):
    client = client_for(admin_a)
    page = client.get("/t/north/networks/")
    assert page.status_code == 200
    assert b"any address may reach" in page.content

    bad = client.post("/t/north/networks/", {"network": "10.1.2.3/16"})
    assert bad.status_code == 400
    assert "did you mean 10.1.0.0/16" in bad.content.decode()

    added = client.post("/t/north/networks/", {"network": "127.0.0.0/8", "label": "loopback"})
    assert added.status_code == 302
    with tenant_scope(tenant_a):
        row = TrustedNetwork.objects.get()
    assert "127.0.0.0/8" in client.get("/t/north/networks/").content.decode()
    removed = client.post(f"/t/north/networks/{row.public_id}/remove/")
    assert removed.status_code == 302
    assert len(events(tenant_a, EventType.TRUSTED_NETWORK_ADDED)) == 1
    assert len(events(tenant_a, EventType.TRUSTED_NETWORK_REMOVED)) == 1


def test_the_page_is_refused_to_a_member_without_the_permission(client_for, tenant_a, radiologist_a, admin_b):
    assert client_for(radiologist_a).get("/t/north/networks/").status_code == 403
    assert client_for(radiologist_a).post("/t/north/networks/", {"network": "10.0.0.0/8"}).status_code == 403
    assert client_for(admin_b).get("/t/north/networks/").status_code == 404  # another tenant's admin
    with tenant_scope(tenant_a):
        assert not TrustedNetwork.objects.exists()


# Enforcement on every web door
# ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # ingestion runs its task on commit
def test_from_inside_the_ranges_every_door_answers(client_for, api_client_for, tenant_a, admin_a, radiologist_a):
    ingest(tenant_a, patient_id="NET-1", patient_name="NET^ONE")
    add(tenant_a, admin_a, "10.20.0.0/16")
    inside = {"REMOTE_ADDR": "10.20.1.2"}
    assert client_for(radiologist_a).get("/t/north/studies/", **inside).status_code == 200
    api = api_client_for(radiologist_a, tenant_a)
    assert api.get("/api/v1/t/north/tokens/", **inside).status_code == 200
    found = api.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, **inside)
    assert found.status_code == 200
    assert len(found.json()) == 1
    assert events(tenant_a, EventType.NETWORK_REFUSED) == []


@pytest.mark.django_db(transaction=True)
def test_from_outside_every_door_is_refused_before_any_read_and_it_raises_an_alert(
    client_for, api_client_for, tenant_a, admin_a, radiologist_a
):
    ingest(tenant_a, patient_id="NET-1", patient_name="NET^ONE")
    add(tenant_a, admin_a, "10.20.0.0/16")
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    queried_before = len(events(tenant_a, EventType.STUDIES_QUERIED))

    page = client_for(radiologist_a).get("/t/north/studies/", **outside)
    api = api_client_for(radiologist_a, tenant_a)
    rest = api.get("/api/v1/t/north/tokens/", **outside)
    qido = api.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, **outside)

    assert page.status_code == rest.status_code == qido.status_code == 403
    for body in (page.content, rest.content, qido.content):
        assert b"NET^ONE" not in body
        assert b"10.20.0.0" not in body  # the refusal names no range
    assert rest.json()["code"] == qido.json()["code"] == "network_refused"
    assert b"cannot be reached from your network address" in page.content
    # Nothing was read: no query on the trail, and each refusal is there with its door and address.
    assert len(events(tenant_a, EventType.STUDIES_QUERIED)) == queried_before
    refused = events(tenant_a, EventType.NETWORK_REFUSED)
    assert [e.extra["door"] for e in refused] == ["pages", "API", "DICOMweb"]
    assert {e.source_address for e in refused} == {"203.0.113.9"}
    assert all(e.actor_user == radiologist_a for e in refused)
    # One alert for the address, not one per request.
    with tenant_scope(tenant_a):
        alerts = list(SecurityAlert.objects.filter(kind="untrusted_network"))
    assert len(alerts) == 1
    assert alerts[0].subject == "203.0.113.9"


def test_a_non_member_from_outside_still_gets_the_404_of_a_tenant_that_does_not_exist(
    api_client_for, tenant_a, tenant_b, admin_a, outsider_b
):
    add(tenant_a, admin_a, "10.20.0.0/16")
    client = api_client_for(outsider_b, tenant_b)
    assert client.get("/api/v1/t/north/tokens/", REMOTE_ADDR="203.0.113.9").status_code == 404
    assert client.get("/api/v1/t/nowhere/tokens/", REMOTE_ADDR="203.0.113.9").status_code == 404
    assert events(tenant_a, EventType.NETWORK_REFUSED) == []


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(api_client_for, tenant_a, admin_a, radiologist_a):
    add(tenant_a, admin_a, "10.20.0.0/16")
    api = api_client_for(radiologist_a, tenant_a)
    with override_settings(TRUSTED_PROXIES=["192.0.2.10/32"]):
        spoofed = api.get("/api/v1/t/north/tokens/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="10.20.1.2")
    assert spoofed.status_code == 403
    [refused] = events(tenant_a, EventType.NETWORK_REFUSED)
    assert refused.source_address == "203.0.113.9"


def test_the_header_of_a_trusted_proxy_is_honoured(api_client_for, tenant_a, admin_a, radiologist_a):
    add(tenant_a, admin_a, "10.20.0.0/16")
    api = api_client_for(radiologist_a, tenant_a)
    with override_settings(TRUSTED_PROXIES=["192.0.2.10/32"]):
        # The proxy appended the client it saw (10.20.1.2); what the client wrote before that (a spoof) is ignored.
        through = api.get(
            "/api/v1/t/north/tokens/", REMOTE_ADDR="192.0.2.10", HTTP_X_FORWARDED_FOR="1.2.3.4, 10.20.1.2"
        )
        outside = api.get(
            "/api/v1/t/north/tokens/", REMOTE_ADDR="192.0.2.10", HTTP_X_FORWARDED_FOR="10.20.1.2, 203.0.113.9"
        )
    assert through.status_code == 200
    assert outside.status_code == 403
    [refused] = events(tenant_a, EventType.NETWORK_REFUSED)
    assert refused.source_address == "203.0.113.9"
