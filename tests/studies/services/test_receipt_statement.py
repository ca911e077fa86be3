"""The receipt of one object (`ingest_receive`: C-STORE and the browser upload) is one statement, worked out once
per connection alias and run as a prepared statement of its connection: the rows are the ones `Model.save` would
write, each receipt its own pair, and the statement is prepared once however many objects come."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies import services
from studies.dicom.synthetic import make_study
from studies.models import Blob, IngestItem
from studies.services.ingest import _receipt_insert
from tenants.scoping import tenant_scope

RECEIPT = '%INSERT INTO "studies_ingestitem"%'


def _prepared_receipts() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s", [RECEIPT])
        return [row[0] for row in cursor.fetchall()]


def test_receipts_are_one_prepared_statement_each_and_write_the_rows_save_would(tenant_a):
    files = make_study(series=1, instances_per_series=3, patient_id="RCPT0001")
    batch = uuid.uuid4()
    with tenant_scope(tenant_a):
        with CaptureQueriesContext(connection) as captured:
            items = [
                services.ingest_receive(
                    source=IngestItem.Source.CSTORE, batch=batch, data=data, source_address="192.0.2.7"
                )
                for data in files
            ]
        receipts = [q["sql"] for q in captured.captured_queries if 'INSERT INTO "studies_ingestitem"' in q["sql"]]
        assert len(receipts) == len(files)  # one statement per object (the study's key made with the first)
        assert len(_prepared_receipts()) == 1  # prepared once, executed three times

        for item, data in zip(items, files, strict=True):
            row = IngestItem.objects.select_related("quarantine").get(pk=item.pk)
            assert (row.tenant_id, row.source, row.batch, row.size) == (tenant_a.pk, "cstore", batch, len(data))
            assert (row.state, row.failure, row.reason, row.attempts) == (IngestItem.State.RECEIVED, "", "", 0)
            assert row.source_address == "192.0.2.7"
            assert row.sha256 == item.sha256
            assert row.public_id == item.public_id
            assert row.created_at is not None
            assert row.quarantine_id == item.quarantine.pk
            assert row.quarantine.kind == Blob.Kind.QUARANTINE
            assert row.quarantine.tenant_id == tenant_a.pk
            assert bytes(row.quarantine.wrapped_key) == bytes(item.quarantine.wrapped_key)
            assert row.quarantine.study_key_id == item.quarantine.study_key_id
        assert len({i.quarantine.pk for i in items}) == len(files)


def test_another_tenant_neither_sees_the_receipts_nor_writes_rows_of_this_one(tenant_a, tenant_b):
    with tenant_scope(tenant_a):
        item = services.ingest_receive(
            source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_study(series=1, instances_per_series=1)[0]
        )
    with tenant_scope(tenant_b):
        assert not IngestItem.objects.filter(pk=item.pk).exists()
        assert not Blob.objects.filter(pk=item.quarantine.pk).exists()
        stranger = IngestItem(tenant=tenant_a, source="cstore", batch=uuid.uuid4(), size=1, sha256="0" * 64)
        blob = Blob(tenant=tenant_a, kind=Blob.Kind.QUARANTINE, storage_name="x", size=1, sha256="0" * 64,
                    wrapped_key=b"k", key_version=0)  # fmt: skip
        with pytest.raises(ValueError, match="current tenant"):
            _receipt_insert(blob, stranger)
