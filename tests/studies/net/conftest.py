"""Fixtures for the DICOM listener tests: tenants with their called AE titles, an approved modality, and the
listener itself, started in this process on a free port (its handlers run in pynetdicom's threads, so tests that
use it need `transactional_db`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devices.models import Device
from devices.services import device_register_approved_by_operator
from studies.net.scp import ListenerServer, start_listener, stop_listener
from tenants.models import Tenant
from tenants.scoping import tenant_scope


def with_ae_title(tenant: Tenant, ae_title: str) -> Tenant:
    Tenant.objects.filter(pk=tenant.pk).update(ae_title=ae_title)
    tenant.refresh_from_db()
    return tenant


def approved_modality(tenant: Tenant, ae_title: str, host: str | None = "127.0.0.1") -> Device:
    with tenant_scope(tenant):
        return device_register_approved_by_operator(
            kind=Device.Kind.MODALITY, name=f"Test {ae_title}", ae_title=ae_title, host=host, reason="test"
        )


@pytest.fixture
def north(transactional_db: Any, tenant_a: Tenant) -> Tenant:
    return with_ae_title(tenant_a, "NORTH")


@pytest.fixture
def south(transactional_db: Any, tenant_b: Tenant) -> Tenant:
    return with_ae_title(tenant_b, "SOUTH")


@pytest.fixture
def demo_ct(north: Tenant) -> Device:
    return approved_modality(north, "DEMO_CT")


@pytest.fixture
def listener(transactional_db: Any) -> Iterator[ListenerServer]:
    server = start_listener("127.0.0.1", 0)
    try:
        yield server
    finally:
        stop_listener(server, grace=5)
