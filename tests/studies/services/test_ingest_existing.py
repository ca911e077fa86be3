"""The batch's look-up of instances already stored: scoped to the tenant, and what makes a second copy a duplicate
rather than a second row."""

from __future__ import annotations

import uuid

import pytest

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem, Instance
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db(transaction=True)  # ingest_receive queues processing on commit


def receive(data: bytes) -> IngestItem:
    item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data, filename="x.dcm")
    item.refresh_from_db()
    return item


def test_an_instance_of_another_tenant_is_not_this_tenants(tenant_a, tenant_b):
    data = make_instance()
    with tenant_scope(tenant_b):
        assert receive(data).state == IngestItem.State.STORED
        theirs = Instance.objects.get()
    with tenant_scope(tenant_a):
        assert receive(data).state == IngestItem.State.STORED  # the tenant's own copy, not a duplicate
        again = receive(data)
        assert again.state == IngestItem.State.DUPLICATE
        ours = Instance.objects.get()
        assert ours.sop_instance_uid == theirs.sop_instance_uid
        assert ours.pk != theirs.pk
        assert again.instance_id == ours.pk
