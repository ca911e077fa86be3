"""The views and tasks name the person in django-auditlog's context (portal.web.actor) without connecting a `pre_save`
receiver per request or per task, and without leaving one behind: django-auditlog's nested `set_actor` left one
connected per request, for ever, in every web process. Who is named is tests/audit/test_auditlog_actor.py's."""

from __future__ import annotations

import pytest
from auditlog.context import auditlog_value, set_actor
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models.signals import pre_save

from portal.web.actor import actor_set
from portal.web.task_context import task_context
from tenants.models import Membership, Role
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import JSON

pytestmark = pytest.mark.django_db


def test_api_and_page_requests_leave_no_receiver_behind(api_client_for, client_for, tenant_a, radiologist_a):
    api, page = api_client_for(radiologist_a, tenant_a), client_for(radiologist_a)
    api.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON)
    page.get("/t/north/")
    before = len(pre_save.receivers)
    for _ in range(3):
        assert api.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 204
        assert api.get("/api/v1/t/north/tokens/").status_code == 200
        assert page.get("/t/north/").status_code == 200
    assert len(pre_save.receivers) == before


def test_without_an_open_context_it_connects_nothing_and_names_the_person(radiologist_a):
    before = len(pre_save.receivers)
    with set_actor(None):  # an ended context stays in the variable: it is not reused
        pass
    ended = auditlog_value.get()
    with actor_set(radiologist_a, remote_addr="10.0.0.9"):
        assert len(pre_save.receivers) == before  # served by the receiver connected at start, none of its own
        assert auditlog_value.get()["actor"] == radiologist_a
        entry = LogEntry(action=LogEntry.Action.UPDATE)
        pre_save.send(sender=LogEntry, instance=entry)
        assert (entry.actor, entry.actor_email, entry.remote_addr) == (
            radiologist_a, radiologist_a.email, "10.0.0.9"
        )  # fmt: skip
    assert auditlog_value.get() is ended
    assert len(pre_save.receivers) == before


def test_the_variable_is_put_back_whatever_the_block_set_in_it(radiologist_a, admin_a):
    before = auditlog_value.get(None)
    # django-auditlog's own `set_actor` inside the block leaves its ended context in the variable
    with actor_set(radiologist_a, remote_addr="10.0.0.9"), set_actor(admin_a):
        pass
    assert auditlog_value.get(None) is before


def test_the_receiver_connected_at_start_fills_only_its_own_contexts(radiologist_a, admin_a):
    with set_actor(admin_a, remote_addr="10.0.0.1"):  # django-auditlog's context, with its own receiver
        entry = LogEntry(action=LogEntry.Action.UPDATE)
        pre_save.send(sender=LogEntry, instance=entry)
        assert (entry.actor, entry.remote_addr) == (admin_a, "10.0.0.1")
    named = LogEntry(action=LogEntry.Action.UPDATE, actor=admin_a)
    with actor_set(radiologist_a, remote_addr="10.0.0.2"):
        pre_save.send(sender=LogEntry, instance=named)  # an entry that names its actor keeps it, as with set_actor
    assert (named.actor, named.remote_addr) == (admin_a, "10.0.0.2")


def test_a_change_in_a_task_names_the_tasks_actor_without_a_receiver_of_its_own(tenant_a, admin_a, radiologist_a):
    with tenant_scope(tenant_a):
        membership = Membership.objects.get(user=radiologist_a)
    before = len(pre_save.receivers)
    with task_context(tenant_id=tenant_a.pk, actor_id=admin_a.pk, principal="enclave:test"):
        assert len(pre_save.receivers) == before
        membership.role = Role.TECHNOLOGIST
        membership.save(update_fields=["role", "updated_at"])
    entry = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Membership), object_pk=str(membership.pk)
    ).latest("pk")
    assert (entry.action, entry.actor, entry.remote_addr) == (LogEntry.Action.UPDATE, admin_a, None)
    assert entry.changes_dict["role"] == [Role.RADIOLOGIST, Role.TECHNOLOGIST]


def test_inside_an_open_context_it_names_the_person_and_puts_the_context_back(radiologist_a, admin_a):
    before = len(pre_save.receivers)
    with set_actor(admin_a, remote_addr="10.0.0.1"):
        outer = auditlog_value.get()
        with actor_set(radiologist_a, remote_addr="10.0.0.2"):
            assert len(pre_save.receivers) == before + 1  # the open context's receiver, no other
            entry = LogEntry(action=LogEntry.Action.UPDATE)
            pre_save.send(sender=LogEntry, instance=entry)
            assert (entry.actor, entry.remote_addr) == (radiologist_a, "10.0.0.2")
        assert auditlog_value.get() is outer
        assert (outer["actor"], outer["remote_addr"]) == (admin_a, "10.0.0.1")
    assert len(pre_save.receivers) == before
