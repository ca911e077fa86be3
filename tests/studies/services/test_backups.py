"""Database backups, restore and the restore drill, through the real parts: pg_dump and pg_restore against the test
server, the real replica store, real scratch databases (issue 13; SECURITY.md A4, B8, B9)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from psycopg import sql

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from studies.models import Blob, Instance, RestoreDrill, StudyKey, TenantKey
from studies.services import tenant_key_rotate
from studies.services.backups import (
    _scratch_drop,
    backups_prune,
    database_backup,
    restore_drill_run,
    source_database,
)
from studies.storage.backups import FOLDER, BackupError, backup_decrypt, backup_get, backup_list, backup_store
from studies.storage.blobs import PRIMARY, REPLICA, blob_read
from studies.storage.keys import study_key_cache, study_key_file_name
from tenants.scoping import platform_scope, tenant_scope
from tests.conftest import verified_client
from tests.databases import database_url, superuser_connect_kwargs
from tests.studies.retention_fixtures import stored_study

pytestmark = pytest.mark.django_db(transaction=True)  # pg_dump reads only what is committed


@pytest.fixture(autouse=True)
def no_backups_before() -> Iterator[None]:
    """The replica store lives as long as the test process: each test starts with no backup in it."""

    def clear() -> None:
        for manifest in backup_list():
            backup_store().delete(manifest.manifest_path)
            backup_store().delete(manifest.dump_path)

    clear()
    yield
    clear()


@contextmanager
def empty_database() -> Iterator[str]:
    """A new, empty database on the test server (owned by the owner of the tables), dropped afterwards."""
    name = f"{connection.settings_dict['NAME'][:40]}_restored_{uuid.uuid4().hex[:8]}"
    owner = _owner()
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
    try:
        yield name
    finally:
        with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def reading_database(name: str) -> Iterator[None]:
    """This process's ORM reads database `name` (the restored copy) inside the block."""
    original = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = name
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = original


def _drill_databases() -> list[str]:
    """This test database's scratch databases (named after it), not those of another run on the same server."""
    prefix = connection.settings_dict["NAME"].replace("_", "\\_") + "\\_drill\\_%"
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix])]


def _first_instance(tenant) -> tuple[Instance, bytes]:
    with tenant_scope(tenant):
        instance = Instance.objects.select_related("blob").order_by("pk").first()
        assert instance is not None
        return instance, blob_read(blob=instance.blob)


def _replica_path(blob: Blob) -> Path:
    return Path(backup_store().path(blob.storage_name))


def test_backup_then_restore_into_an_empty_database_and_the_archive_reads_again(tenant_a, tenant_b):
    stored_study(tenant_a, patient_id="BK-A", study_date=date(2024, 1, 2))
    stored_study(tenant_b, patient_id="BK-B", study_date=date(2024, 1, 3))
    instance, plaintext = _first_instance(tenant_a)

    call_command("backup_database")
    manifest = backup_get("latest")
    assert manifest.tables["studies_instance"] == 8
    assert {h["tenant_id"] for h in manifest.chains} >= {tenant_a.pk, tenant_b.pk}
    with tenant_scope(tenant_a):  # the backup is on the audit trail, on the platform's chain
        event = AuditEvent.unscoped_objects.get(event_type=EventType.DATABASE_BACKED_UP)
        assert event.tenant_id is None
        assert event.extra["backup"] == manifest.name
        assert event.extra["sha256"] == manifest.sha256

    with empty_database() as name:
        call_command("restore_database", "--backup", "latest", "--target-url", database_url(name))
        assert AuditEvent.unscoped_objects.filter(event_type=EventType.DATABASE_RESTORED).count() == 1

        # Not into a database that holds tables, unless --force.
        with pytest.raises(CommandError, match="not empty"):
            call_command("restore_database", "--backup", manifest.name, "--target-url", database_url(name))
        call_command("restore_database", "--backup", manifest.name, "--target-url", database_url(name), "--force")

        with reading_database(name):
            assert connection.settings_dict["NAME"] == name
            # The restored copy holds every row of the backup, but not what came after it (the restore events).
            assert not AuditEvent.unscoped_objects.filter(event_type=EventType.DATABASE_RESTORED).exists()
            with tenant_scope(tenant_a):
                assert Instance.objects.count() == 4
                restored = Instance.objects.select_related("blob").get(pk=instance.pk)
                assert blob_read(blob=restored.blob) == plaintext  # the restored wrapped keys open the blobs
            with tenant_scope(tenant_b):
                assert Instance.objects.count() == 4


def test_backup_is_encrypted_and_does_not_open_without_the_master_key(tenant_a, tmp_path):
    """SECURITY.md A4: "Decrypting a backup without its key fails"."""
    stored_study(tenant_a, patient_id="ENC-PATIENT", study_date=date(2024, 1, 2), patient_name="Secret^Name")
    manifest = database_backup()
    raw = backup_store().open(manifest.dump_path, "rb").read()
    assert b"PGDMP" not in raw  # pg_dump's custom format starts with it
    assert b"ENC-PATIENT" not in raw
    assert b"Secret^Name" not in raw

    backup_decrypt(manifest=manifest, out=tmp_path / "ok.dump")  # with the master key: the exact archive
    assert (tmp_path / "ok.dump").read_bytes()[:5] == b"PGDMP"

    with override_settings(MASTER_KEY="Ag" + "A" * 41 + "="), pytest.raises(BackupError, match="does not open"):
        backup_decrypt(manifest=manifest, out=tmp_path / "other-key.dump")
    assert not (tmp_path / "other-key.dump").exists()

    manifest.tables["studies_instance"] -= 1  # an edited manifest no longer opens the key either
    with pytest.raises(BackupError, match="does not open"):
        backup_decrypt(manifest=manifest, out=tmp_path / "edited.dump")


def test_restore_refuses_a_damaged_backup_and_leaves_the_target_alone(tenant_a):
    stored_study(tenant_a, patient_id="DMG", study_date=date(2024, 1, 2))
    manifest = database_backup()
    path = Path(backup_store().path(manifest.dump_path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    listing = io.StringIO()
    call_command("restore_database", "--list", stdout=listing)
    assert manifest.name in listing.getvalue()
    with pytest.raises(CommandError, match="--target-url is required"):
        call_command("restore_database")
    with empty_database() as name:
        with pytest.raises(CommandError, match="unreadable"):
            call_command("restore_database", "--target-url", database_url(name))
        with psycopg.connect(**{**superuser_connect_kwargs(), "dbname": name}) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_the_drill_passes_on_a_healthy_archive_and_the_compliance_report_shows_it(
    tenant_a, tenant_b, compliance_a, client_for
):
    stored_study(tenant_a, patient_id="DR-A", study_date=date(2024, 1, 2))
    stored_study(tenant_b, patient_id="DR-B", study_date=date(2024, 1, 3))
    manifest = database_backup()

    drill = restore_drill_run(sample_percent=100, sample_min=1)

    assert drill.status == RestoreDrill.Status.PASSED, drill.problems
    assert drill.problems == []
    assert drill.backup_name == manifest.name
    assert drill.recovery_seconds is not None
    assert drill.recovery_seconds > 0
    assert drill.bytes_restored > manifest.size
    assert drill.checks["tables"] == len(manifest.tables)
    assert drill.checks["rows"] == sum(manifest.tables.values())
    assert drill.checks["blobs_sampled"] == 8
    assert drill.checks["blobs_failed"] == 0
    for tenant in (tenant_a, tenant_b):
        assert drill.checks["tenants"][str(tenant.pk)]["blobs_sampled"] == 4
        assert drill.checks["tenants"][str(tenant.pk)]["chain_events"] > 0
    assert drill.checks["events"] > 0
    assert _drill_databases() == []  # the scratch database is gone

    platform = AuditEvent.unscoped_objects.get(event_type=EventType.RESTORE_DRILL_RUN, tenant=None)
    assert platform.outcome == Outcome.SUCCESS
    assert platform.extra["drill"] == drill.pk
    with tenant_scope(tenant_a):
        own = AuditEvent.objects.get(event_type=EventType.RESTORE_DRILL_RUN)
        assert own.extra["blobs_sampled"] == 4
        assert own.extra["status"] == "passed"

    page = client_for(compliance_a).get(f"/t/{tenant_a.slug}/audit/compliance/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Backups: last restore drill" in text
    assert manifest.name in text
    assert "passed" in text
    assert "4 of 4 images decrypted and hash-checked (0 failed)" in text


def test_the_drill_fails_and_says_why_when_a_replica_blob_is_damaged(tenant_a, compliance_a, client_for):
    stored_study(tenant_a, patient_id="DR-BAD", study_date=date(2024, 1, 2))
    database_backup()
    instance, _ = _first_instance(tenant_a)
    path = _replica_path(instance.blob)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01  # one byte of the last chunk's ciphertext
    path.write_bytes(bytes(data))

    drill = restore_drill_run(sample_percent=100, sample_min=1)

    assert drill.status == RestoreDrill.Status.FAILED
    assert any(str(instance.blob.public_id) in p and "does not decrypt" in p for p in drill.problems), drill.problems
    assert drill.checks["blobs_failed"] == 1
    assert RestoreDrill.objects.get(pk=drill.pk).status == RestoreDrill.Status.FAILED
    with tenant_scope(tenant_a):
        own = AuditEvent.objects.get(event_type=EventType.RESTORE_DRILL_RUN)
        assert own.outcome == Outcome.SERIOUS_FAILURE
    page = client_for(compliance_a).get(f"/t/{tenant_a.slug}/audit/compliance/")
    assert "FAILED" in page.content.decode()
    with pytest.raises(CommandError):  # the command exits non-zero on a failed drill
        call_command("restore_drill", "--sample-percent", "100")


def test_the_drill_fails_when_a_row_count_differs_from_the_manifest(tenant_a):
    stored_study(tenant_a, patient_id="DR-ROWS", study_date=date(2024, 1, 2))
    manifest = database_backup()
    # A manifest that does not describe its dump (a dump that lost rows): sealed again with the master key, as
    # only the backup job could, so that the drill's row count check is what catches it.
    key = manifest.data_key()
    manifest.tables["studies_instance"] += 1
    manifest.seal(key)
    backup_store().delete(manifest.manifest_path)
    backup_store().save(manifest.manifest_path, ContentFile(manifest.to_json()))

    drill = restore_drill_run(sample_percent=100, sample_min=1)

    assert drill.status == RestoreDrill.Status.FAILED
    assert "table studies_instance: 4 rows restored, 5 in the manifest" in drill.problems


def test_the_drill_fails_without_a_backup_and_with_an_edited_manifest(tenant_a):
    drill = restore_drill_run()
    assert drill.status == RestoreDrill.Status.FAILED
    assert drill.problems == ["there is no backup yet"]

    manifest = database_backup()
    manifest.tables["studies_instance"] = 7  # edited without the master key: the key no longer opens
    backup_store().delete(manifest.manifest_path)
    backup_store().save(manifest.manifest_path, ContentFile(manifest.to_json()))
    drill = restore_drill_run()
    assert drill.status == RestoreDrill.Status.FAILED
    assert "does not open" in drill.problems[0]
    assert _drill_databases() == []


@contextmanager
def autovacuum_every_second() -> Iterator[None]:
    """The server's autovacuum on (a CI server may run with it off: conf.d/90-ci.conf here, where this test could
    never pass) and waking every second (default: a minute), for as long as the block runs; then as configured."""
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET autovacuum = on")
        conn.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET autovacuum_naptime")
            conn.execute("ALTER SYSTEM RESET autovacuum")
            conn.execute("SELECT pg_reload_conf()")


def _scratch_with_rows(rows: int, *, slow_autovacuum: bool = False) -> str:
    """A scratch database of the owner's, as the drill makes it, with a table of `rows` rows just inserted. With
    `slow_autovacuum`, an autovacuum worker on that table is throttled to a page per 100 ms or slower (its own
    cost settings), so once it has started it is still there minutes later: nothing races its end."""
    name = f"{connection.settings_dict['NAME'][:40]}_drill_{uuid.uuid4().hex[:10]}"
    with source_database().connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    throttled = (
        " WITH (autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1)" if slow_autovacuum else ""
    )
    with psycopg.connect(**{**superuser_connect_kwargs(), "dbname": name}, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE filler (n integer, pad text){throttled}")
        conn.execute("INSERT INTO filler SELECT g, repeat('x', 100) FROM generate_series(1, %s) g", [rows])
    return name


def _owner() -> str:
    return settings.DATABASE_OWNER.get("USER") or "enclave"


def _sessions_on(name: str) -> list[tuple[str | None, str | None]]:
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        return conn.execute("SELECT backend_type, usename FROM pg_stat_activity WHERE datname = %s", [name]).fetchall()


def _autovacuum_on_filler(name: str) -> bool:
    """An autovacuum worker is vacuuming the scratch database's throttled table (not only passing through)."""
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a USING (pid)"
            " WHERE p.datname = %s AND a.backend_type = 'autovacuum worker' AND p.relid = %s",
            [name, _filler_oid(name)],
        ).fetchone()
    return bool(row and row[0])


def _filler_oid(name: str) -> int:
    with psycopg.connect(**{**superuser_connect_kwargs(), "dbname": name}, autocommit=True) as conn:
        row = conn.execute("SELECT 'filler'::regclass::oid").fetchone()
    assert row is not None
    return int(row[0])


def test_the_scratch_database_goes_while_autovacuum_works_on_it():
    """A fresh restore wakes autovacuum on the scratch database. DROP ... WITH (FORCE) then fails for the owner of
    the tables (no superuser): "permission denied to terminate process", seen in CI on PostgreSQL 18, and the
    drill raised with its scratch database left behind. The drill's drop gets the database out from under the
    worker, and the owner's own session still on it.

    Deterministic: the table's own autovacuum cost settings keep the worker on it (100 000 rows, about 1 800
    pages at 100 ms or more each: minutes), so the worker seen vacuuming it is still at work when the drop runs,
    whenever it started. Only its start is waited for (autovacuum on and its naptime 1 s meanwhile, whatever the
    server's configuration): the wait ends as soon as it is there; its bound is only what a server whose few workers
    are busy elsewhere may need."""
    name = ""
    try:
        with autovacuum_every_second():
            name = _scratch_with_rows(100_000, slow_autovacuum=True)
            owners_session = psycopg.connect(**{**superuser_connect_kwargs(), "user": _owner(), "dbname": name})
            deadline = time.monotonic() + 300
            while not _autovacuum_on_filler(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _autovacuum_on_filler(name), "autovacuum did not start on the scratch database"
            sessions = _sessions_on(name)
            assert ("autovacuum worker", None) in sessions
            assert ("client backend", _owner()) in sessions

            assert _scratch_drop(source_database(), name) == []
        owners_session.close()
        assert _drill_databases() == []
    finally:
        if name:  # a failed run leaves no scratch database (nor its throttled worker) behind
            with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_scratch_database_that_will_not_go_is_a_problem_of_the_drill_not_an_error():
    name = _scratch_with_rows(10)
    other = psycopg.connect(**{**superuser_connect_kwargs(), "dbname": name})  # a session the owner may not end
    try:
        problems = _scratch_drop(source_database(), name, attempts=1)
        assert len(problems) == 1
        assert problems[0].startswith(f"the scratch database {name} was not dropped (ObjectInUse")
        assert problems[0].endswith("drop it by hand")
    finally:
        other.close()
        with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_drill_fails_above_its_recovery_point_and_time_targets_and_raises_an_alert(tenant_a):
    manifest = database_backup()
    _redate(manifest.name, (timezone.now() - timedelta(hours=30)).isoformat())

    with override_settings(RESTORE_DRILL_MAX_BACKUP_AGE_HOURS=26, RESTORE_DRILL_MAX_RECOVERY_SECONDS=0):
        drill = restore_drill_run()

    assert drill.status == RestoreDrill.Status.FAILED
    assert drill.problems[0].startswith("the latest backup is 30.0 h old (target 26 h)")
    assert drill.problems[1].startswith("recovery took ")
    assert drill.problems[1].endswith("(target 0 s)")
    assert len(drill.problems) == 2  # the restored copy itself checked out
    assert drill.checks["backup_age_hours"] >= 30
    alert = SecurityAlert.unscoped_objects.get(kind="restore_drill_failed")
    assert alert.tenant is None
    assert alert.severity == SecurityAlert.Severity.CRITICAL
    with platform_scope():  # the platform chain's event: no tenant's
        assert alert.event.event_type == EventType.RESTORE_DRILL_RUN


def _redate(name: str, created_at: str) -> None:
    manifest = backup_get(name)
    key = manifest.data_key()
    manifest.created_at = created_at
    manifest.seal(key)
    backup_store().delete(manifest.manifest_path)
    backup_store().save(manifest.manifest_path, ContentFile(manifest.to_json()))


def test_retention_keeps_the_backups_of_the_last_days(tenant_a):
    names = [database_backup(keep_daily=100).name for _ in range(4)]
    for name, when in zip(
        names,
        ["2026-01-01T10:00:00+00:00", "2026-01-03T10:00:00+00:00", "2026-01-03T12:00:00+00:00",
         "2026-01-04T09:00:00+00:00"],
        strict=True,
    ):  # fmt: skip
        _redate(name, when)

    # Dumps without a manifest (backups cut short): deleted once a day old, not while one may be under way.
    backup_store().save(f"{FOLDER}/db-cut-short.dump.enc", ContentFile(b"x"))
    backup_store().save(f"{FOLDER}/db-under-way.dump.enc", ContentFile(b"x"))
    day_ago = (timezone.now() - timedelta(days=1, minutes=1)).timestamp()
    os.utime(backup_store().path(f"{FOLDER}/db-cut-short.dump.enc"), (day_ago, day_ago))

    deleted = backups_prune(keep_daily=2)

    assert not backup_store().exists(f"{FOLDER}/db-cut-short.dump.enc")
    assert backup_store().exists(f"{FOLDER}/db-under-way.dump.enc")
    backup_store().delete(f"{FOLDER}/db-under-way.dump.enc")
    assert deleted == [names[0]]  # the 3rd keeps both of its backups
    assert [m.name for m in backup_list()] == names[1:]
    assert not backup_store().exists(f"{FOLDER}/{names[0]}.dump.enc")
    assert not backup_store().exists(f"{FOLDER}/{names[0]}.json")
    event = AuditEvent.unscoped_objects.get(event_type=EventType.DATABASE_BACKUPS_DELETED)
    assert event.extra["backups"] == [names[0]]
    assert event.extra["unfinished"] == [f"{FOLDER}/db-cut-short.dump.enc"]
    with pytest.raises(ValueError, match="at least 1"):
        backups_prune(keep_daily=0)
    # The scheduled backup prunes by the setting: one more today keeps today's and the 4th of January's.
    with override_settings(BACKUP_KEEP_DAILY=2):
        newest = database_backup().name
    assert [m.name for m in backup_list()] == [names[3], newest]


def test_operators_see_the_drills_in_the_admin_read_only(platform_staff):
    drill = restore_drill_run()  # no backup yet: a failed drill
    ops = verified_client(platform_staff)
    listing = ops.get("/ops/studies/restoredrill/")
    assert listing.status_code == 200
    assert "there is no backup yet" not in listing.content.decode()  # the reasons are on the drill's own page
    page = ops.get(f"/ops/studies/restoredrill/{drill.pk}/change/")
    assert page.status_code == 200
    assert "there is no backup yet" in page.content.decode()
    assert ops.post(f"/ops/studies/restoredrill/{drill.pk}/delete/").status_code == 403


def _every_blob_reads(tenant) -> int:
    """Read every blob of the tenant as a fresh process would (nothing cached), hash checked."""
    study_key_cache.clear()
    with tenant_scope(tenant):
        blobs = list(Blob.objects.exclude(kind=Blob.Kind.QUARANTINE).select_related("study_key"))
        for blob in blobs:
            assert hashlib.sha256(blob_read(blob=blob)).hexdigest() == blob.sha256
        return len(blobs)


def test_a_backup_taken_before_a_key_rotation_restores_and_every_image_reads(tenant_a):
    stored_study(tenant_a, patient_id="ROT-BK-1", study_date=date(2023, 1, 2))
    stored_study(tenant_a, patient_id="ROT-BK-2", study_date=date(2023, 2, 3))
    assert _every_blob_reads(tenant_a) == 12
    manifest = database_backup()
    with tenant_scope(tenant_a):
        report = tenant_key_rotate()
        assert (report.version, report.retired, report.study_keys) == (2, [1], 2)

    with empty_database() as name:
        call_command("restore_database", "--backup", manifest.name, "--target-url", database_url(name))
        with reading_database(name):
            with tenant_scope(tenant_a):  # the restored rows are those of before the rotation
                assert list(TenantKey.objects.values_list("version", "active")) == [(1, True)]
                assert set(StudyKey.objects.values_list("key_version", flat=True)) == {1}
            assert _every_blob_reads(tenant_a) == 12
    # The live archive reads through the new version.
    assert _every_blob_reads(tenant_a) == 12


def test_old_key_files_go_once_no_backup_from_before_the_rotation_is_kept(tenant_a):
    stored_study(tenant_a, patient_id="ROT-PRUNE", study_date=date(2023, 1, 2))
    before = database_backup()
    with tenant_scope(tenant_a):
        tenant_key_rotate()
        key_id = StudyKey.objects.get().key_id
        old, new = (study_key_file_name(tenant_id=tenant_a.pk, key_id=key_id, version=v) for v in (1, 2))
        # Retired two days ago, as if the rotation had run then.
        TenantKey.objects.filter(version=1).update(retired_at=timezone.now() - timedelta(days=2))

    def files() -> set[str]:
        return {f"{s}:{n[-2:]}" for s in (PRIMARY, REPLICA) for n in (old, new) if storages[s].exists(n)}

    assert files() == {"blobs:v1", "blobs:v2", "replica:v1", "replica:v2"}
    _redate(before.name, (timezone.now() - timedelta(days=3)).isoformat())
    backups_prune(keep_daily=5)  # the backup from before the rotation is kept: so are the old files
    assert files() == {"blobs:v1", "blobs:v2", "replica:v1", "replica:v2"}
    assert not AuditEvent.unscoped_objects.filter(event_type=EventType.ROTATED_KEY_FILES_REMOVED).exists()

    database_backup(keep_daily=1)  # today's backup only: the one from before goes, and the old files with it
    assert [m.name for m in backup_list()] != [before.name]
    assert before.name not in [m.name for m in backup_list()]
    assert files() == {"blobs:v2", "replica:v2"}
    with tenant_scope(tenant_a):
        event = AuditEvent.objects.get(event_type=EventType.ROTATED_KEY_FILES_REMOVED)
        assert (event.extra["versions"], event.extra["study_keys"]) == ([1], 1)
        assert TenantKey.objects.get(version=1).key_files_removed_at is not None
    assert _every_blob_reads(tenant_a) == 6
    backups_prune(keep_daily=1)  # done once
    assert AuditEvent.unscoped_objects.filter(event_type=EventType.ROTATED_KEY_FILES_REMOVED).count() == 1


def test_a_backup_reaches_the_disk_dump_first_then_its_manifest(tenant_a, monkeypatch, settings):
    """With folder stores synced (settings.BLOB_SYNC, off in the test settings for speed): the dump's data is synced
    before its manifest is written, the manifest's data and folder before `backup_write` returns (the audit event
    and the prune of older backups come after it), so a crash never leaves a finished-looking backup without its
    dump, nor older backups pruned for one it lost."""
    settings.BLOB_SYNC = True
    store = backup_store()
    events: list[tuple[str, str]] = []
    for call in ("fdatasync", "fsync"):
        real = getattr(os, call)

        def recorded(fd: int, call: str = call, real=real) -> None:
            events.append((call, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        monkeypatch.setattr(os, call, recorded)
    real_save = store.save

    def save(name, content):
        events.append(("save", name))
        return real_save(name, content)

    monkeypatch.setattr(store, "save", save)
    monkeypatch.setattr(
        "studies.services.backups.audit_event_record", lambda **kw: events.append(("audit", kw["event"]))
    )

    manifest = database_backup()

    dump_path, manifest_path = store.path(manifest.dump_path), store.path(manifest.manifest_path)
    shown = [
        (what, target) for what, target in events if what in ("save", "audit") or target in (dump_path, manifest_path)
    ]
    assert shown == [
        ("save", manifest.dump_path),
        ("fdatasync", dump_path),
        ("save", manifest.manifest_path),
        ("fdatasync", manifest_path),
        ("audit", EventType.DATABASE_BACKED_UP),
    ]
    between = events[events.index(("fdatasync", manifest_path)) : events.index(("audit", EventType.DATABASE_BACKED_UP))]
    assert ("fsync", os.path.dirname(manifest_path)) in between  # the manifest's name, durable before the event
