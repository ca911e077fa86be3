"""Fixtures of the device registry tests: a second administrator of tenant A (approval takes two people) and
devices in each state, made through the real services."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devices.models import Device
from tenants.models import Role, Tenant, User
from tests.devices.helpers import approve, register


@pytest.fixture
def second_admin_a(tenant_a: Tenant, make_member: Callable[..., User]) -> User:
    return make_member(tenant_a, Role.TENANT_ADMIN, "north-admin-2")


@pytest.fixture
def pending_device(tenant_a: Tenant, admin_a: User) -> Device:
    """Registered by `admin_a`, so only another administrator may approve it."""
    return register(tenant_a, admin_a, ae_title="CT_PENDING", name="CT 2, emergency")


@pytest.fixture
def approved_device(tenant_a: Tenant, admin_a: User, second_admin_a: User) -> Device:
    return approve(tenant_a, second_admin_a, register(tenant_a, admin_a, ae_title="MR_OK", name="MR 1"))


@pytest.fixture
def device_b(tenant_b: Tenant, admin_b: User) -> Device:
    return register(tenant_b, admin_b, ae_title="SOUTH_CT", name="South CT")


@pytest.fixture
def many_devices(tenant_a: Tenant, admin_a: User) -> Callable[[int], list[Device]]:
    made: list[Device] = []

    def make(count: int) -> list[Device]:
        """`count` more devices, each with its own AE title and host."""
        start = len(made)
        made.extend(
            register(tenant_a, admin_a, ae_title=f"CT_{n:03d}", host=f"10.0.{n // 200}.{n % 200 + 1}")
            for n in range(start, start + count)
        )
        return made[start:]

    return make
