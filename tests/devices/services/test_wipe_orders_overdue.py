"""Wipe orders open too long raise a SecurityAlert, once per order, through the beat job's fan-out task."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from audit.events import EventType
from audit.models import SecurityAlert
from devices import services
from devices.models import WipeOrder
from devices.tasks import wipe_orders_overdue_task
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events


def test_an_overdue_order_raises_one_alert_and_a_fresh_one_none(tenant_a, admin_a, approved_device, device_b):
    with tenant_scope(tenant_a):
        old = services.device_wipe_order(actor=admin_a, device=approved_device, reason="decommission")
        WipeOrder.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=73))

    first = wipe_orders_overdue_task.delay().get()
    second = wipe_orders_overdue_task.delay().get()

    assert (first, second) == (1, 0)
    with tenant_scope(tenant_a):
        alert = SecurityAlert.objects.get(kind="wipe_order_overdue")
    assert alert.tenant == tenant_a
    assert "open for over 72 hours" in alert.summary
    overdue = [e for e in events(tenant_a, EventType.DEVICE_WIPE_ORDERED) if e.extra.get("overdue")]
    assert [e.extra["order"] for e in overdue] == [str(old.public_id)]


def test_an_order_within_the_policy_raises_nothing(tenant_a, admin_a, approved_device):
    with tenant_scope(tenant_a):
        services.device_wipe_order(actor=admin_a, device=approved_device, reason="decommission")

    wipe_orders_overdue_task.delay().get()

    with tenant_scope(tenant_a):
        assert not SecurityAlert.objects.filter(kind="wipe_order_overdue").exists()
