"""The views name the person in django-auditlog's request context (portal.web.actor) without leaving a `pre_save`
receiver behind: django-auditlog's nested `set_actor` left one connected per request, for ever, in every web
process. Who is named is tests/audit/test_auditlog_actor.py's."""

from __future__ import annotations

import pytest
from auditlog.context import auditlog_value, set_actor
from auditlog.models import LogEntry
from django.db.models.signals import pre_save

from portal.web.actor import actor_set
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


def test_without_an_open_context_it_connects_and_disconnects_its_own(radiologist_a):
    before = len(pre_save.receivers)
    with set_actor(None):  # an ended context stays in the variable: it is not reused
        pass
    with actor_set(radiologist_a, remote_addr="10.0.0.9"):
        assert len(pre_save.receivers) == before + 1
        assert auditlog_value.get()["actor"] == radiologist_a
    assert len(pre_save.receivers) == before


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
