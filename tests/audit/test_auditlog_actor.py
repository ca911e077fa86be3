"""django-auditlog names who changed a row whichever door they came through: a browser session, an API token
(which django-auditlog's middleware cannot see: DRF authenticates inside the view), or a Celery task."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from audit.events import EventType
from tenants.models import Membership, Role
from tenants.scoping import tenant_scope
from tenants.tasks import tenant_memberships_end_due_task
from tests.audit.helpers import last_event

pytestmark = pytest.mark.django_db


def _entries(model, pk):
    return LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(model), object_pk=str(pk)).order_by(
        "timestamp", "pk"
    )


def _membership(tenant, user):
    with tenant_scope(tenant):
        return Membership.objects.get(user=user)


def test_session_user_on_a_page(client_for, tenant_a, admin_a, radiologist_a):
    membership = _membership(tenant_a, radiologist_a)

    response = client_for(admin_a).post(
        f"/t/north/members/{membership.public_id}/role/", {"role": Role.TECHNOLOGIST}, REMOTE_ADDR="10.9.8.7"
    )

    assert response.status_code == 302
    entry = _entries(Membership, membership.pk).last()
    assert entry.action == LogEntry.Action.UPDATE
    assert entry.changes_dict["role"] == [Role.RADIOLOGIST, Role.TECHNOLOGIST]
    assert entry.actor == admin_a
    assert entry.remote_addr == "10.9.8.7"
    assert entry.additional_data == {"tenant_id": tenant_a.pk}


def test_api_token_user(api_client_for, tenant_a, admin_a, radiologist_a):
    client = api_client_for(admin_a, tenant_a)
    membership = _membership(tenant_a, radiologist_a)

    response = client.patch(
        f"/api/v1/t/north/members/{membership.public_id}/", {"role": Role.TECHNOLOGIST}, format="json",
        REMOTE_ADDR="10.1.1.1",
    )  # fmt: skip

    assert response.status_code == 200, response.content
    entry = _entries(Membership, membership.pk).last()
    assert entry.action == LogEntry.Action.UPDATE
    assert entry.changes_dict["role"] == [Role.RADIOLOGIST, Role.TECHNOLOGIST]
    assert entry.actor == admin_a
    assert entry.remote_addr == "10.1.1.1"
    assert entry.additional_data == {"tenant_id": tenant_a.pk}


def test_celery_task(tenant_a, make_member):
    expired = make_member(tenant_a, Role.AUDITOR, "north-old-auditor", ends_in_days=-1)
    membership = _membership(tenant_a, expired)

    assert tenant_memberships_end_due_task.delay(tenant_id=tenant_a.pk).get() == 1

    entry = _entries(Membership, membership.pk).last()
    assert entry.action == LogEntry.Action.UPDATE
    assert entry.changes_dict["status"] == [Membership.Status.ACTIVE, Membership.Status.ENDED]
    assert entry.additional_data == {"tenant_id": tenant_a.pk}
    ended = last_event(tenant_a, EventType.MEMBERSHIP_ENDED)
    assert ended.system_principal == "enclave:membership-expiry"
    assert ended.actor_user is None
    assert ended.participants[1]["name"] == "north-old-auditor"
