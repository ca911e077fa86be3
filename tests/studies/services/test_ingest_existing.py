"""The batch's look-up of instances already stored (`_existing_instances`, a statement written out): scoped to the
tenant, and what makes a second copy a duplicate rather than a second row."""

from __future__ import annotations

import uuid

import pytest

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem, Instance
from studies.services.ingest import _existing_instances
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
        uid = Instance.objects.get().sop_instance_uid
        assert set(_existing_instances([uid, "1.2.3"])) == {uid}
    with tenant_scope(tenant_a):
        assert _existing_instances([uid]) == {}
        assert receive(data).state == IngestItem.State.STORED  # the tenant's own copy, not a duplicate
        again = receive(data)
        assert again.state == IngestItem.State.DUPLICATE
        assert Instance.objects.count() == 1
        found = _existing_instances([uid])
        assert list(found) == [uid]
        assert found[uid].tenant_id == tenant_a.pk
        assert again.instance_id == found[uid].pk


def test_nothing_to_look_up(tenant_a):
    with tenant_scope(tenant_a):
        assert _existing_instances([]) == {}
