"""A device's life seen from the DICOM listener: refused while pending, let in once a second administrator
approves it, refused again from the next association after it is revoked. The listener runs in this process on a
free port and pynetdicom's SCU speaks to it over loopback (its handlers run in threads: `transactional_db`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from audit.events import EventType
from audit.models import AuditEvent
from studies.net.scp import ListenerServer, start_listener, stop_listener
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.devices.helpers import approve, register, revoke
from tests.studies.net.scu import associate, echo

CALLING_AE_NOT_RECOGNISED = 0x03


@pytest.fixture
def listener(transactional_db: Any) -> Iterator[ListenerServer]:
    server = start_listener("127.0.0.1", 0)
    try:
        yield server
    finally:
        stop_listener(server, grace=5)


@pytest.fixture
def north(transactional_db: Any, tenant_a: Tenant) -> Tenant:
    Tenant.objects.filter(pk=tenant_a.pk).update(ae_title="NORTH")
    tenant_a.refresh_from_db()
    return tenant_a


def rejections(tenant: Tenant) -> int:
    with tenant_scope(tenant):
        return AuditEvent.objects.filter(event_type=EventType.ASSOCIATION_REJECTED).count()


def test_pending_refused_approved_let_in_revoked_refused(listener, north, admin_a, second_admin_a):
    device = register(north, admin_a, ae_title="LIFE_CT", host="127.0.0.1")

    pending = associate(port=listener.port, calling="LIFE_CT", called="NORTH")
    approve(north, second_admin_a, device)
    approved = echo(port=listener.port, calling="LIFE_CT", called="NORTH")
    revoke(north, admin_a, device, reason="decommissioned")
    revoked = associate(port=listener.port, calling="LIFE_CT", called="NORTH")

    assert pending.rejected
    assert approved == 0x0000
    assert revoked.rejected
    assert revoked.diagnostic == CALLING_AE_NOT_RECOGNISED
    assert rejections(north) == 2


def test_a_suspended_modality_is_refused_and_let_in_again_once_reinstated(listener, north, admin_a, second_admin_a):
    from devices import services

    device = approve(north, second_admin_a, register(north, admin_a, ae_title="SUSP_CT", host="127.0.0.1"))
    with tenant_scope(north):
        services.device_suspend(actor=admin_a, device=device, reason="service visit")
    suspended = associate(port=listener.port, calling="SUSP_CT", called="NORTH")
    with tenant_scope(north):
        services.device_approve(actor=admin_a, device=device, reason="service done")
    reinstated = echo(port=listener.port, calling="SUSP_CT", called="NORTH")

    assert suspended.rejected
    assert suspended.diagnostic == CALLING_AE_NOT_RECOGNISED
    assert reinstated == 0x0000
