"""Tamper tests on PostgreSQL (issue 2, SECURITY.md E5/E6).

The application's connection cannot change or delete an audit event: the database refuses. Someone holding the
database's keys can (a superuser disables the trigger), and `manage.py audit_verify` then names the sequence
number where the chain breaks.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.events import EventType
from audit.models import AuditEvent
from tenants.scoping import tenant_scope
from tests.audit.helpers import record
from tests.chains import chain_of
from tests.databases import database_url, superuser_connect_kwargs

TRIGGER = "audit_auditevent_append_only"


def _seed(tenant, count=5):
    """Events 2..count+1 after TENANT_CREATED (sequence 1)."""
    return [record(tenant, EventType.LOGIN_FAILED, actor_username=f"guess{n}") for n in range(count)]


def _as_superuser(*statements):
    """Run SQL as the PostgreSQL superuser, trigger disabled: what an attacker with the database's keys can do."""
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE audit_auditevent DISABLE TRIGGER {TRIGGER}")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        finally:
            conn.execute(f"ALTER TABLE audit_auditevent ENABLE TRIGGER {TRIGGER}")


def _verify(*args):
    out = io.StringIO()
    call_command("audit_verify", *args, stdout=out)
    return out.getvalue()


def _verify_in_a_process() -> subprocess.CompletedProcess:
    """`manage.py audit_verify` as an operator runs it, against the test database: the real exit code."""
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "portal.settings.test"}
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "manage.py", "audit_verify"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def _verify_fails(*args):
    with pytest.raises(CommandError) as failure:
        _verify(*args)
    assert failure.value.returncode == 1
    return str(failure.value)


# The application's connection (role `enclave`)
# ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_database_refuses_update_and_delete_from_the_application(tenant_a):
    event = _seed(tenant_a, 1)[0]
    for sql in (
        "UPDATE audit_auditevent SET actor_username = 'mallory' WHERE id = %s",
        "DELETE FROM audit_auditevent WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError) as refused,
            tenant_scope(tenant_a),  # the row is visible to the role: the trigger, not the policy, refuses
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [event.pk])
        assert "append-only" in str(refused.value)
        assert isinstance(refused.value.__cause__, psycopg.errors.InsufficientPrivilege)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.unscoped_objects.filter(pk=event.pk).update(actor_username="mallory")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.unscoped_objects.filter(pk=event.pk).delete()
    with tenant_scope(tenant_a):
        event.refresh_from_db()
    assert event.actor_username == "guess0"


@pytest.mark.django_db
def test_the_model_refuses_save_and_delete_of_a_stored_event(tenant_a):
    event = _seed(tenant_a, 1)[0]
    event.actor_username = "mallory"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()


# audit_verify
# ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_verify_passes_whole_chains(tenant_a, tenant_b):
    _seed(tenant_a)
    assert _verify_in_a_process().returncode == 0
    out = _verify()
    assert "tenant north (tenant:" in out
    assert f"tenant north (tenant:{tenant_a.pk}): 6 events, OK" in out
    assert f"tenant south (tenant:{tenant_b.pk}): 1 events, OK" in out
    south = _verify("--tenant", "south").strip().splitlines()
    assert south[0] == f"tenant south (tenant:{tenant_b.pk}): 1 events, OK"
    assert south[1].startswith(f"changes of tenant south (changes:tenant:{tenant_b.pk}): ")
    assert south[1].endswith(" entries, OK")


@pytest.mark.django_db
def test_verify_refuses_an_unknown_tenant(tenant_a):
    with pytest.raises(CommandError, match="No tenant with the slug 'nowhere'") as failure:
        _verify("--tenant", "nowhere")
    assert failure.value.returncode == 2


@pytest.mark.django_db(transaction=True)
def test_a_row_edited_by_a_superuser_is_found_at_its_sequence(tenant_a, tenant_b):
    _seed(tenant_a)
    _as_superuser(
        (
            "UPDATE audit_auditevent SET actor_username = 'mallory' WHERE tenant_id = %s AND sequence = 4",
            [tenant_a.pk],
        )
    )
    assert AuditEvent.unscoped_objects.get(tenant=tenant_a, sequence=4).actor_username == "mallory"

    message = _verify_fails()
    assert "tenant north: chain broken at sequence 4 (event altered)" in message
    process = _verify_in_a_process()
    assert process.returncode == 1
    assert "tenant north: chain broken at sequence 4 (event altered)" in process.stderr
    assert "tenant south" in process.stdout
    assert "south" not in message
    assert "OK" in _verify("--tenant", "south")
    assert "sequence 4" in _verify_fails("--tenant", "north")


@pytest.mark.django_db(transaction=True)
def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(tenant_a):
    _seed(tenant_a)
    forged = AuditEvent.unscoped_objects.get(tenant=tenant_a, sequence=3)
    forged.actor_username = "mallory"
    new_hash = forged.compute_hash(forged.prev_hash)
    _as_superuser(
        (
            "UPDATE audit_auditevent SET actor_username = 'mallory', hash = %s WHERE tenant_id = %s AND sequence = 3",
            [new_hash, tenant_a.pk],
        )
    )
    assert "chain broken at sequence 4 (link to the previous event broken)" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_a_deleted_middle_row_is_found_as_a_gap(tenant_a):
    _seed(tenant_a)
    _as_superuser(("DELETE FROM audit_auditevent WHERE tenant_id = %s AND sequence = 3", [tenant_a.pk]))
    assert "tenant north: chain broken at sequence 3 (missing event)" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_a_deleted_last_row_is_found_against_the_chain_head(tenant_a):
    _seed(tenant_a)
    last = chain_of(tenant_a).last_sequence
    assert last == 6
    _as_superuser(("DELETE FROM audit_auditevent WHERE tenant_id = %s AND sequence = %s", [tenant_a.pk, last]))
    assert f"tenant north: chain broken at sequence {last} (missing event)" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_a_row_appended_beyond_the_chain_head_is_found(tenant_a):
    _seed(tenant_a, 1)
    template = AuditEvent.unscoped_objects.get(tenant=tenant_a, sequence=2)
    _as_superuser(
        (
            "INSERT INTO audit_auditevent (public_id, chain_id, tenant_id, sequence, occurred_at, event_type, event_id,"
            " event_id_display, event_type_code, event_type_display, action, outcome, outcome_description,"
            " actor_username, actor_role, system_principal, target_type, target_id, participants, request_id,"
            " extra, prev_hash, hash) SELECT gen_random_uuid(), chain_id, tenant_id, 3, occurred_at, event_type,"
            " event_id, event_id_display, event_type_code, event_type_display, action, outcome, outcome_description,"
            " 'mallory', actor_role, system_principal, target_type, target_id, participants, request_id, extra,"
            " hash, hash FROM audit_auditevent WHERE id = %s",
            [template.pk],
        )
    )
    assert "chain broken at sequence 3 (event beyond the chain head)" in _verify_fails()
