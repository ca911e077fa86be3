"""Services queue tasks by name (tenants.jobs), so tasks may import services without an import cycle."""

from __future__ import annotations

import pytest
from celery.exceptions import NotRegistered

from studies.models import IngestItem
from tenants.jobs import task_queue_on_commit
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db


def test_an_unknown_task_name_fails_at_the_call(tenant_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(NotRegistered):
        task_queue_on_commit("studies.tasks.no_such_task", tenant_id=tenant_a.pk)
    assert callbacks == []


def test_the_named_task_runs_after_the_commit(tenant_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        task_queue_on_commit("studies.tasks.tenant_ingest_requeue", tenant_id=tenant_a.pk)
    assert len(callbacks) == 1
    callbacks[0]()  # eager in the test settings: the task itself runs, in its task context
    with tenant_scope(tenant_a):
        assert IngestItem.objects.count() == 0
