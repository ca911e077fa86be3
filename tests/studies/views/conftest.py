"""Fixtures for the archive's page tests: studies put in through the real upload service and pipeline."""

from __future__ import annotations

import uuid

import pytest

from studies.models import IngestItem
from studies.services import upload_receive
from tenants.scoping import tenant_scope


@pytest.fixture
def upload(django_capture_on_commit_callbacks):
    """Upload `data` as `user` of `tenant`, processing included; returns the items as they ended."""

    def run(tenant, user, data, *, filename="IM0001.dcm", batch=None):
        batch = batch or uuid.uuid4()
        with tenant_scope(tenant), django_capture_on_commit_callbacks(execute=True):
            items = upload_receive(actor=user, batch=batch, filename=filename, data=data)
        with tenant_scope(tenant):
            return [IngestItem.objects.get(pk=item.pk) for item in items]

    return run
