"""django-auditlog's table is append-only and hash-chained like the audit events (issue 12): the database refuses
UPDATE and DELETE of an entry, each committed entry is sealed into its tenant's change chain, and `audit_verify`
finds an edited entry, a deleted entry, a deleted seal, a truncated tail and an entry inserted without a seal."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from auditlog.models import LogEntry
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import ChangeSeal
from audit.services import audit_changes_seal, audit_changes_seal_all
from tests.audit.test_tamper import _verify, _verify_fails, _verify_in_a_process
from tests.chains import chain_by_key, platform_read
from tests.databases import superuser_connect_kwargs

TRIGGERS = {"auditlog_logentry": "auditlog_logentry_append_only", "audit_changeseal": "audit_changeseal_append_only"}


def _as_superuser(*statements):
    # The server the tests run on (the embedded one of `make test`, or DATABASE_URL's), as its superuser.
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        for table, trigger in TRIGGERS.items():
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        finally:
            for table, trigger in TRIGGERS.items():
                conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


def _entries(tenant):
    return list(LogEntry.objects.filter(additional_data__tenant_id=tenant.pk).order_by("pk"))


def _seals(tenant):
    seals = ChangeSeal.objects.filter(chain__key=ChangeSeal.chain_key(tenant.pk)).order_by("sequence")
    return platform_read(lambda: list(seals))  # the change chains are the platform's rows


@pytest.mark.django_db
def test_the_database_refuses_update_and_delete_of_an_entry(tenant_a, admin_a, compliance_a, radiologist_a):
    entry = _entries(tenant_a)[0]
    for sql in (
        "UPDATE auditlog_logentry SET object_repr = 'x' WHERE id = %s",
        "DELETE FROM auditlog_logentry WHERE id = %s",
    ):
        with pytest.raises(DatabaseError) as refused, transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [entry.pk])
        assert "append-only" in str(refused.value)
    with pytest.raises(DatabaseError), transaction.atomic():
        LogEntry.objects.filter(pk=entry.pk).update(object_repr="x")


@pytest.mark.django_db(transaction=True)
def test_committed_entries_are_sealed_at_commit_in_order(tenant_a, admin_a, compliance_a, radiologist_a):
    entries = _entries(tenant_a)
    seals = _seals(tenant_a)
    assert entries, "the tenant's creation and its members are changes"
    assert sorted(seal.entry_id for seal in seals) == [entry.pk for entry in entries]
    assert [seal.sequence for seal in seals] == list(range(1, len(seals) + 1))
    assert chain_by_key(ChangeSeal.chain_key(tenant_a.pk)).last_hash == seals[-1].hash
    assert audit_changes_seal(tenant_id=tenant_a.pk) == 0  # idempotent
    assert "changes of tenant north" in _verify()
    assert _verify_in_a_process().returncode == 0


@pytest.mark.django_db
def test_only_committed_entries_are_sealed(tenant_a, make_member, django_capture_on_commit_callbacks):
    def rolled_back():
        with transaction.atomic():
            make_member(tenant_a, "radiologist", "rolled-back")
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert _entries(tenant_a) == []
    assert _seals(tenant_a) == []
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        make_member(tenant_a, "radiologist", "kept")
    assert len(callbacks) == 1  # one sealing per tenant per transaction, however many entries
    entries = _entries(tenant_a)
    assert entries
    assert [seal.entry_id for seal in _seals(tenant_a)] == [entry.pk for entry in entries]


@pytest.mark.django_db(transaction=True)
def test_an_edited_entry_is_found(tenant_a, admin_a, compliance_a, radiologist_a):
    target = _seals(tenant_a)[1]
    _as_superuser(('UPDATE auditlog_logentry SET changes = \'{"role": ["a", "b"]}\' WHERE id = %s', [target.entry_id]))
    message = _verify_fails()
    assert f"changes of tenant north: chain broken at sequence 2 (change entry {target.entry_id} altered)" in message
    assert _verify_in_a_process().returncode == 1


@pytest.mark.django_db(transaction=True)
def test_a_deleted_entry_is_found_by_its_seal(tenant_a, admin_a, compliance_a, radiologist_a):
    target = _seals(tenant_a)[0]
    _as_superuser(("DELETE FROM auditlog_logentry WHERE id = %s", [target.entry_id]))
    assert f"chain broken at sequence 1 (change entry {target.entry_id} deleted)" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_a_deleted_seal_is_a_gap_and_a_truncated_tail_is_found(tenant_a, admin_a, compliance_a, radiologist_a):
    seals = _seals(tenant_a)
    assert len(seals) >= 3
    _as_superuser(("DELETE FROM audit_changeseal WHERE id = %s", [seals[1].pk]))
    assert "changes of tenant north: chain broken at sequence 2 (missing change seal)" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_a_truncated_tail_of_entries_and_seals_is_found_against_the_head(
    tenant_a, admin_a, compliance_a, radiologist_a
):
    last = _seals(tenant_a)[-1]
    _as_superuser(
        ("DELETE FROM audit_changeseal WHERE id = %s", [last.pk]),
        ("DELETE FROM auditlog_logentry WHERE id = %s", [last.entry_id]),
    )
    assert f"chain broken at sequence {last.sequence} (missing change seal)" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_an_entry_inserted_behind_the_application_is_found_once_past_the_grace(
    tenant_a, admin_a, compliance_a, radiologist_a
):
    template = _entries(tenant_a)[0]
    old = timezone.now() - timedelta(hours=1)
    _as_superuser(
        (
            "INSERT INTO auditlog_logentry (content_type_id, object_pk, object_id, object_repr, action, changes_text,"
            " changes, actor_id, timestamp, additional_data) SELECT content_type_id, object_pk, object_id,"
            " 'forged', action, '', changes, actor_id, %s, additional_data FROM auditlog_logentry WHERE id = %s",
            [old, template.pk],
        )
    )
    message = _verify_fails("--tenant", "north")
    assert "was never sealed" in message
    # The sealing job would seal it (it cannot tell a forgery from a missed seal): that is why the grace is short
    # and the job's sealing of an old entry is itself visible in the seal's time.
    assert audit_changes_seal_all() == 1
    assert "OK" in _verify("--tenant", "north")
