"""The audit events' table partitioned by month, and the Ed25519-signed digests of the chain heads (issue 12).

Partitions: events of two months land in two partitions (tableoid), the database refuses UPDATE and DELETE on the
rows of every partition (the default one too), the chain verifies across partitions, and the job that makes the
partitions ahead is idempotent. Digests: signed with the key of the environment and checked with its public half
alone; a forged digest file, a removed file and a removed digest row are each found, and the scheduled
verification raises an alert for them.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import signing
from audit.events import EventType
from audit.models import AuditDigest, AuditEvent
from audit.services import audit_digests_sign, audit_partitions_ensure
from tenants.scoping import platform_scope
from tests.audit.helpers import record
from tests.audit.test_digests_and_syslog import _superuser
from tests.audit.test_tamper import _verify, _verify_fails
from tests.chains import chain_of, platform_read


def _record_at(monkeypatch, tenant, when: datetime, **kwargs) -> AuditEvent:
    """An event written by the real writer at `when` (the writer stamps timezone.now())."""
    with monkeypatch.context() as patch:
        patch.setattr(timezone, "now", lambda: when)
        return record(tenant, EventType.LOGIN_FAILED, **kwargs)


def _partition_of(event: AuditEvent) -> str:
    with platform_scope(), connection.cursor() as cursor:  # a look at the table itself, across tenants
        cursor.execute("SELECT tableoid::regclass::text FROM audit_auditevent WHERE id = %s", [event.pk])
        return cursor.fetchone()[0]


def _partitions() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'audit_auditevent'::regclass ORDER BY 1"
        )
        return [row[0] for row in cursor.fetchall()]


def _next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


# Partitions
# ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_events_of_two_months_land_in_two_partitions_and_the_chain_verifies(tenant_a, monkeypatch):
    today = timezone.now().astimezone(UTC).date()
    following = _next_month(today)
    this_month = _record_at(monkeypatch, tenant_a, datetime(today.year, today.month, 1, 12, tzinfo=UTC))
    next_month = _record_at(monkeypatch, tenant_a, datetime(following.year, following.month, 2, 9, tzinfo=UTC))
    far = _record_at(monkeypatch, tenant_a, datetime(2091, 6, 1, tzinfo=UTC))  # no partition that far: default

    assert _partition_of(this_month) == f"audit_auditevent_y{today.year:04d}m{today.month:02d}"
    assert _partition_of(next_month) == f"audit_auditevent_y{following.year:04d}m{following.month:02d}"
    assert _partition_of(far) == "audit_auditevent_default"
    assert {_partition_of(this_month), _partition_of(next_month), _partition_of(far)} <= set(_partitions())
    # The ORM reads them back through the partitioned table, by id and by public id.
    assert AuditEvent.unscoped_objects.get(pk=next_month.pk).public_id == next_month.public_id
    assert AuditEvent.unscoped_objects.get(public_id=far.public_id).sequence == far.sequence
    # The chain runs across the partitions, in sequence order.
    assert "events, OK" in _verify("--tenant", "north")


@pytest.mark.django_db
def test_the_database_refuses_update_and_delete_in_every_partition(tenant_a, monkeypatch):
    today = timezone.now().astimezone(UTC).date()
    following = _next_month(today)
    events = [
        _record_at(monkeypatch, tenant_a, datetime(today.year, today.month, 1, 12, tzinfo=UTC)),
        _record_at(monkeypatch, tenant_a, datetime(following.year, following.month, 1, 12, tzinfo=UTC)),
        _record_at(monkeypatch, tenant_a, datetime(2091, 6, 1, tzinfo=UTC)),
    ]
    partitions = {_partition_of(event) for event in events}
    assert len(partitions) == 3
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'audit_auditevent_append_only'"
            " AND tgenabled = 'O'"
        )
        guarded = {row[0] for row in cursor.fetchall()}
    assert set(_partitions()) | {"audit_auditevent"} <= guarded  # every partition has the trigger
    for event in events:
        partition = _partition_of(event)
        for table in ("audit_auditevent", partition):  # through the partitioned table and the partition itself
            for sql in (
                f"UPDATE {table} SET actor_username = 'mallory' WHERE id = %s",
                f"DELETE FROM {table} WHERE id = %s",
            ):
                with (
                    pytest.raises(DatabaseError) as refused,
                    platform_scope(),  # every row visible: the trigger, not the policy, refuses
                    transaction.atomic(),
                    connection.cursor() as cursor,
                ):
                    cursor.execute(sql, [event.pk])
                assert "append-only" in str(refused.value)
    # Moving a row to another month (an UPDATE of the partition key) is refused too.
    with pytest.raises(DatabaseError), platform_scope(), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET occurred_at = occurred_at + interval '40 days' WHERE id = %s",
                       [events[0].pk])  # fmt: skip


@pytest.mark.django_db
def test_the_partition_job_makes_the_months_ahead_once(tenant_a, monkeypatch):
    made = audit_partitions_ensure(months_ahead=2, today=date(2031, 11, 20))
    assert made == ["audit_auditevent_y2031m11", "audit_auditevent_y2031m12", "audit_auditevent_y2032m01"]
    assert set(made) <= set(_partitions())
    assert audit_partitions_ensure(months_ahead=2, today=date(2031, 11, 20)) == []  # idempotent
    # A new partition gets the trigger and every index of the partitioned table.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'audit_auditevent_y2032m01'::regclass"
                       " AND tgname = 'audit_auditevent_append_only'")  # fmt: skip
        assert cursor.fetchone()[0] == 1
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_auditevent'")
        parent_indexes = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_auditevent_y2032m01'")
        assert cursor.fetchone()[0] == parent_indexes > 10
    event = _record_at(monkeypatch, tenant_a, datetime(2031, 12, 24, tzinfo=UTC))
    assert _partition_of(event) == "audit_auditevent_y2031m12"

    # Events already in the default partition for a month: its partition cannot be made; the job says so and goes on.
    _record_at(monkeypatch, tenant_a, datetime(2033, 3, 3, tzinfo=UTC))
    assert audit_partitions_ensure(months_ahead=1, today=date(2033, 2, 1)) == ["audit_auditevent_y2033m02"]
    assert "audit_auditevent_y2033m03" not in _partitions()


@pytest.mark.django_db
def test_the_partition_task_is_scheduled_and_runs(settings):
    from audit.tasks import audit_partitions_ensure_task
    from portal.celery_schedule import BEAT_SCHEDULE

    assert BEAT_SCHEDULE["audit-partitions-ensure"]["task"] == "audit.tasks.audit_partitions_ensure"
    settings.AUDIT_PARTITION_MONTHS_AHEAD = 5
    made = audit_partitions_ensure_task.delay().get()
    today = timezone.now().astimezone(UTC).date()
    # The migration made this month and three ahead: the task adds the fourth and fifth.
    assert len(made) == 2
    assert audit_partitions_ensure_task.delay().get() == []
    assert f"audit_auditevent_y{today.year:04d}m{today.month:02d}" in _partitions()


# Signed digests
# ------------------------------------------------------------------------------


def _file(digest: AuditDigest) -> dict:
    with storages["replica"].open(digest.path, "rb") as handle:
        return json.loads(handle.read())


@pytest.mark.django_db
def test_a_digest_is_a_row_and_a_file_that_the_public_key_alone_checks(tenant_a):
    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign()
    chain = chain_of(tenant_a)
    digest = platform_read(lambda: AuditDigest.objects.get(chain=chain))
    assert digest.path == f"audit-digests/t{tenant_a.pk}/events/{digest.day.isoformat()}.json"
    data = _file(digest)
    assert (data["chain"], data["last_sequence"], data["last_hash"]) == (chain.key, chain.last_sequence,
                                                                          chain.last_hash)  # fmt: skip
    assert data["previous_signature"] == ""
    # What an outside auditor does with the file and the published key, without Enclave's code.
    published = _verify("--public-key").split()[1]
    assert published == data["public_key"] == signing.public_key_text()
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(published))
    signature = bytes.fromhex(data.pop("signature"))
    data.pop("public_key")
    public.verify(signature, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())  # raises if forged
    # The change chain of the tenant has its own file beside it.
    assert (
        platform_read(lambda: AuditDigest.objects.filter(path__startswith=f"audit-digests/t{tenant_a.pk}/").count())
        >= 1
    )


@pytest.mark.django_db
def test_a_digests_file_is_on_disk_before_its_row_commits(tenant_a, settings, monkeypatch):
    """studies.storage.durable: the replica store's copy is synced (its data, its folders) in the row's
    transaction, so a crash cannot leave a digest row whose file the WORM anchor and auditors then miss."""
    import os

    settings.BLOB_SYNC = True
    synced: list[str] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    record(tenant_a, EventType.LOGOUT)

    audit_digests_sign()

    digest = platform_read(lambda: AuditDigest.objects.get(chain=chain_of(tenant_a)))
    assert storages["replica"].path(digest.path) in synced


@pytest.mark.django_db
def test_digests_chain_to_the_previous_one(tenant_a):
    record(tenant_a, EventType.LOGOUT)
    assert audit_digests_sign(day=date(2026, 1, 1)) >= 1
    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign(day=date(2026, 1, 2))
    first, second = platform_read(lambda: list(AuditDigest.objects.filter(chain__tenant=tenant_a).order_by("day")))
    assert second.prev_signature == first.signature
    assert second.last_sequence == first.last_sequence + 1
    assert "OK" in _verify("--tenant", "north")


@pytest.mark.django_db
def test_verification_with_only_the_public_key(tenant_a, settings):
    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign()
    settings.AUDIT_SIGNING_PUBLIC_KEY = signing.public_key_text()
    settings.AUDIT_SIGNING_KEY = ""
    assert "signed digests not checked" not in _verify("--tenant", "north")
    # Another public key than the signer's: every digest is reported.
    other = Ed25519PrivateKey.generate().public_key()
    settings.AUDIT_SIGNING_PUBLIC_KEY = base64.b64encode(signing.public_key_raw(other)).decode()
    assert "has a forged signature" in _verify_fails("--tenant", "north")


def test_the_key_is_read_as_base64_seed_or_pem(settings):
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())  # fmt: skip
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    for text in (base64.b64encode(seed).decode(), pem):
        settings.AUDIT_SIGNING_KEY = text
        assert signing.signing_key().public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        settings.AUDIT_SIGNING_KEY = bad
        with pytest.raises(ImproperlyConfigured):
            signing.signing_key()


@pytest.mark.django_db
def test_a_forged_digest_file_is_found(tenant_a):
    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign()
    digest = platform_read(lambda: AuditDigest.objects.get(chain__tenant=tenant_a))
    data = _file(digest)
    # The forger rewrites the file to sign an earlier head, with a key of their own.
    forger = Ed25519PrivateKey.generate()
    data.pop("signature")
    data["last_sequence"] = 1
    data["public_key"] = base64.b64encode(forger.public_key().public_bytes_raw()).decode()
    body = {k: v for k, v in data.items() if k != "public_key"}
    data["signature"] = forger.sign(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hex()
    store = storages["replica"]
    store.delete(digest.path)
    store.save(digest.path, ContentFile(json.dumps(data).encode()))
    assert f"digest file of {digest.day} has a forged signature" in _verify_fails("--tenant", "north")

    # A file re-signed by the real key but not matching its row cannot be made without the key; a removed file is
    # found as well.
    store.delete(digest.path)
    assert f"digest file of {digest.day} is missing from the replica store" in _verify_fails("--tenant", "north")


@pytest.mark.django_db(transaction=True)
def test_a_removed_digest_row_is_found(tenant_a):
    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign(day=date(2026, 1, 1))
    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign(day=date(2026, 1, 2))
    first = platform_read(lambda: AuditDigest.objects.get(chain__tenant=tenant_a, day=date(2026, 1, 1)))
    _superuser(
        ("DELETE FROM audit_auditdigest WHERE id = %s", [first.pk]),
        disable=("audit_auditdigest", "audit_auditdigest_append_only"),
    )
    message = _verify_fails("--tenant", "north")
    assert "digest of 2026-01-02 does not follow the previous digest" in message
    assert f"digest file {first.path} has no record (a digest removed)" in message


@pytest.mark.django_db(transaction=True)
def test_the_scheduled_verification_alerts_on_a_forged_digest(tenant_a):
    from audit.models import SecurityAlert
    from audit.tasks import audit_verify_tenant_task
    from tenants.scoping import tenant_scope

    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign()
    digest = platform_read(lambda: AuditDigest.objects.get(chain__tenant=tenant_a))
    _superuser(
        ("UPDATE audit_auditdigest SET last_hash = %s WHERE id = %s", ["f" * 64, digest.pk]),
        disable=("audit_auditdigest", "audit_auditdigest_append_only"),
    )
    assert audit_verify_tenant_task.delay(tenant_id=tenant_a.pk).get() is False
    with tenant_scope(tenant_a):
        alert = SecurityAlert.objects.get(kind="audit_verification_failed")
        assert alert.event.extra["digests_checked"] is True
    assert f"digest of {digest.day} has a forged signature" in alert.summary


# The migration converts a table that holds events
# ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_migration_copies_existing_events_into_the_partitions():
    """A database of its own, migrated to audit 0008, with events of three months and an alert; then migrated on:
    every row is kept as it was, each in its month's partition, the alert still names its event, the ids go on."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import psycopg

    from tests.databases import database_url, superuser_connect_kwargs

    name = f"{connection.settings_dict['NAME']}_partition_migration"
    admin = {**superuser_connect_kwargs(), "dbname": "postgres"}
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} OWNER enclave")
    env = {**os.environ, "DATABASE_URL": database_url(name), "DJANGO_SETTINGS_MODULE": "portal.settings.test"}
    root = Path(__file__).resolve().parents[2]

    def migrate(*target: str) -> None:
        subprocess.run([sys.executable, "manage.py", "migrate", *target, "-v0"], cwd=root, env=env, check=True,
                       capture_output=True, timeout=600)  # fmt: skip

    try:
        migrate("audit", "0008")
        times = ["2024-02-10 08:00:00+00", "2024-03-31 23:59:59.5+00", timezone.now().isoformat()]
        with psycopg.connect(**{**superuser_connect_kwargs(), "dbname": name}, autocommit=True) as conn:
            chain_id = conn.execute("INSERT INTO audit_auditchain (key, last_sequence, last_hash) VALUES"
                                    " ('platform', 3, 'h3') RETURNING id").fetchone()[0]  # fmt: skip
            for n, at in enumerate(times, start=1):
                conn.execute(
                    "INSERT INTO audit_auditevent (public_id, chain_id, sequence, occurred_at, event_type, event_id,"
                    " event_id_display, event_type_code, event_type_display, action, outcome, outcome_description,"
                    " actor_username, actor_role, system_principal, target_type, target_id, participants,"
                    " request_id, extra, prev_hash, hash) VALUES (gen_random_uuid(), %s, %s, %s, 1, '110114', 'x',"
                    " '', '', 'E', 0, '', %s, '', '', '', '', '[]', '', '{}', %s, %s)",
                    [chain_id, n, at, f"user{n}", f"h{n - 1}", f"h{n}"],
                )
            before = conn.execute("SELECT id, public_id, sequence, occurred_at, hash FROM audit_auditevent"
                                  " ORDER BY id").fetchall()  # fmt: skip
            conn.execute("INSERT INTO audit_securityalert (public_id, raised_at, kind, severity, summary, event_id,"
                         " status, note, subject, evidence) VALUES (gen_random_uuid(), now(), 'k', 'high', 's', %s,"
                         " 'open', '', '', '[]')", [before[1][0]])  # fmt: skip
        migrate()
        with psycopg.connect(**{**superuser_connect_kwargs(), "dbname": name}, autocommit=True) as conn:
            after = conn.execute("SELECT id, public_id, sequence, occurred_at, hash FROM audit_auditevent"
                                 " ORDER BY id").fetchall()  # fmt: skip
            where = conn.execute("SELECT tableoid::regclass::text FROM audit_auditevent ORDER BY id").fetchall()
            alert_event = conn.execute("SELECT e.sequence FROM audit_securityalert a JOIN audit_auditevent e"
                                       " ON e.id = a.event_id").fetchall()  # fmt: skip
            next_id = conn.execute("SELECT nextval('audit_auditevent_id_seq')").fetchone()[0]
            kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'audit_auditevent'").fetchone()[0]
        today = timezone.now().astimezone(UTC)
        assert kind == "p"
        assert after == before
        this_month = f"audit_auditevent_y{today.year}m{today.month:02d}"
        assert [row[0] for row in where] == ["audit_auditevent_y2024m02", "audit_auditevent_y2024m03", this_month]
        assert alert_event == [(2,)]
        assert next_id > before[-1][0]
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
