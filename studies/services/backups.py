"""Database backups, restores and the restore drill (issue 13; SECURITY.md A4, B8, B9).

Why pg_dump on a schedule and not pg_basebackup with WAL archiving: it works the same, with no server
configuration, on the embedded PostgreSQL of `make run` and on a managed server (where archive_command and
replication connections are often not ours to set); its archive restores into any server of the same or a newer
major version, and into a scratch database of the same server, which is what the drill needs. The price is the
recovery point: up to a day of changes (one backup a day by default), where WAL archiving would lose minutes. The
blobs are not in the dump: they are in the primary store and, whole, in the replica store.

Platform work across every tenant: these services run outside any tenant scope and record their events on the
platform's audit chain; the drill also records one event on each tenant's chain, for its compliance report.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.db import connection, connections, transaction
from django.db.utils import load_backend
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from psycopg import sql

from audit.events import EventType, Outcome
from audit.models import AuditChain, SecurityAlert
from audit.selectors import audit_chain_verify
from audit.services import audit_event_record, security_alert_raise
from studies.models import Blob, RestoreDrill, StudyKey, TenantKey
from studies.services.keys import rotated_key_files_prune
from studies.storage import envelope
from studies.storage.backups import (
    BackupError,
    BackupManifest,
    backup_decrypt,
    backup_delete,
    backup_get,
    backup_list,
    backup_store,
    backup_unfinished,
    backup_write,
    master_key,
    replica_copy_to,
)
from studies.storage.keys import KEY_FILE_MAGIC, study_key_file_name
from studies.storage.pgtools import Database, PgToolError, pg_tool, server_major, tool_major
from studies.storage.pgtools import run as pg_run
from tenants.db import rowsecurity
from tenants.models import Tenant
from tenants.scoping import DATABASE_SETTING, PLATFORM, platform_scope, tenant_scope

PRINCIPAL = "enclave:backup"
DRILL_PRINCIPAL = "enclave:restore-drill"
DRILL_ALIAS = "restore_drill"


def _work_dir() -> str | None:
    return settings.BACKUP_WORK_DIR or None


def _owner_settings(name: str | None = None) -> dict[str, Any]:
    """This process's database as the owner of the tables reaches it (DATABASE_URL: the application's role owns
    nothing and cannot dump, restore or create databases), in a platform scope: the tables' row-level security is
    forced, so it holds the owner too (tenants.db.rowsecurity)."""
    options = dict(settings.DATABASE_OWNER.get("OPTIONS") or {})
    options["options"] = f"{options.get('options', '')} -c {DATABASE_SETTING}={PLATFORM}".strip()
    return {
        **connection.settings_dict,
        "USER": settings.DATABASE_OWNER.get("USER"),
        "PASSWORD": settings.DATABASE_OWNER.get("PASSWORD"),
        "OPTIONS": options,
        "NAME": name or connection.settings_dict["NAME"],
    }


def source_database() -> Database:
    """The database this process uses, as the PostgreSQL tools reach it: as the owner, in a platform scope."""
    return Database.from_settings(_owner_settings())


def _table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        ).fetchall()
    ]
    counts = {}
    for table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def _chain_heads(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    query = sql.SQL("SELECT key, tenant_id, last_sequence, last_hash FROM {} ORDER BY key").format(
        sql.Identifier(AuditChain._meta.db_table)
    )
    rows = conn.execute(query).fetchall()
    return [{"key": k, "tenant_id": t, "last_sequence": int(s), "last_hash": h} for k, t, s, h in rows]


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def database_backup(*, keep_daily: int | None = None) -> BackupManifest:
    """Back the whole database up: pg_dump (custom format) of one snapshot, encrypted, to the replica store, with
    a manifest of the row counts and audit chain heads taken in that same snapshot; then prune old backups.

    Platform job, no scope. Not idempotent (each call is a new backup; names carry the snapshot's time to the
    microsecond). Records DATABASE_BACKED_UP on the platform chain. Raises PgToolError or BackupError."""
    source = source_database()
    major = server_major(source)
    pg_dump = pg_tool("pg_dump", major=major)
    with tempfile.TemporaryDirectory(prefix="enclave-backup-", dir=_work_dir()) as work:
        dump = Path(work) / "database.dump"
        # One REPEATABLE READ snapshot, exported to pg_dump: the counts and chain heads in the manifest are those of
        # the very rows in the dump, however busy the archive is meanwhile.
        with source.connect() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            row = conn.execute("SELECT pg_export_snapshot(), now()").fetchone()
            assert row is not None
            snapshot, taken_at = row[0], row[1].astimezone(UTC)
            tables, chains = _table_counts(conn), _chain_heads(conn)
            pg_run(
                [pg_dump, "--format=custom", f"--snapshot={snapshot}", "--enable-row-security", "--file", str(dump),
                 "--dbname", source.conninfo],
                database=source,
            )  # fmt: skip
            conn.rollback()
        manifest = BackupManifest(
            name="db-" + taken_at.strftime("%Y%m%dT%H%M%S%fZ"),
            created_at=taken_at.isoformat(),
            database=source.name,
            server_major=major,
            pg_dump_version=tool_major(pg_dump),
            size=0,
            sha256="",
            encrypted_size=0,
            tables=tables,
            chains=chains,
        )
        backup_write(manifest=manifest, dump=dump, work_dir=Path(work))
    audit_event_record(
        event=EventType.DATABASE_BACKED_UP,
        system_principal=PRINCIPAL,
        extra={"backup": manifest.name, "size": manifest.size, "sha256": manifest.sha256,
               "encrypted_size": manifest.encrypted_size, "tables": len(tables), "rows": sum(tables.values()),
               "chains": len(chains)},
    )  # fmt: skip
    backups_prune(keep_daily=keep_daily if keep_daily is not None else settings.BACKUP_KEEP_DAILY)
    return manifest


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def backups_prune(*, keep_daily: int) -> list[str]:
    """Keep every backup of the last `keep_daily` days that have backups (UTC days of their snapshots); delete the
    older ones. The newest backup is always kept, and a day with several backups (one taken by hand before a risky
    change, say) keeps them all. Also deletes the dumps left without a manifest for a day (backups cut short).
    Records DATABASE_BACKUPS_DELETED when it deleted any. Then each tenant's study key files of retired key
    versions that no kept backup needs any more are removed (studies.services.keys.rotated_key_files_prune: a
    backup taken before a rotation names the old version's files, and must still open). Names deleted."""
    if keep_daily < 1:
        raise ValueError("keep_daily must be at least 1: pruning never deletes every backup")
    backups = backup_list()
    days = sorted({m.created_at[:10] for m in backups})[-keep_daily:]
    kept = {m.name for m in backups if m.created_at[:10] in days}
    doomed = [m for m in backups if m.name not in kept]
    for manifest in doomed:
        backup_delete(manifest=manifest)
    # A day is long enough for any backup under way to write its manifest (BACKUP_TIME_LIMIT_SECONDS is less).
    unfinished = backup_unfinished(older_than=timezone.now() - timedelta(days=1))
    for path in unfinished:
        backup_store().delete(path)
    taken = [parse_datetime(m.created_at) for m in backups if m.name in kept]
    oldest = min((when for when in taken if when is not None), default=None)
    for tenant in Tenant.objects.order_by("pk"):
        with tenant_scope(tenant):
            rotated_key_files_prune(oldest_backup=oldest)
    if doomed or unfinished:
        audit_event_record(
            event=EventType.DATABASE_BACKUPS_DELETED,
            system_principal=PRINCIPAL,
            extra={"backups": [m.name for m in doomed], "unfinished": unfinished, "kept": sorted(kept),
                   "keep_daily": keep_daily},
        )  # fmt: skip
    return [m.name for m in doomed]


def _is_empty(target: Database) -> bool:
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").fetchone()
    return row is not None and row[0] == 0


def _schema_replace(target: Database) -> None:
    """Drop the target's tables (its current schema) and make the schema anew: what --force replaces. pg_restore's
    own --clean cannot do it once the audit table is partitioned (it drops each partition's inherited constraints
    one by one, which PostgreSQL refuses)."""
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
        schema = row[0] if row is not None else "public"
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def _restore_into(manifest: BackupManifest, target: Database, *, force: bool) -> None:
    """Decrypt the backup (checked against its manifest before the target is touched) and pg_restore it into
    `target` in one transaction: a failed restore into an empty target leaves it empty. With `force`, the target's
    tables are dropped first (after the backup has been decrypted and checked)."""
    major = server_major(target)
    if not force and not _is_empty(target):
        raise BackupError(f"the target database {target.name!r} is not empty (use --force to replace its tables)")
    pg_restore = pg_tool("pg_restore", major=max(major, manifest.pg_dump_version))
    with tempfile.TemporaryDirectory(prefix="enclave-restore-", dir=_work_dir()) as work:
        dump = Path(work) / "database.dump"
        backup_decrypt(manifest=manifest, out=dump)
        args = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                "--dbname", target.conninfo]  # fmt: skip
        if force and not _is_empty(target):
            _schema_replace(target)
        pg_run([*args, str(dump)], database=target)
    _app_role_grant(target)


def _app_role_grant(target: Database) -> None:
    """The restored tables come without their grants (--no-privileges): the application's role gets its own again,
    as `migrate` gives it (tenants.db.roles), so the archive reads again once DATABASE_URL points at the target."""
    role = str(settings.DATABASES["default"].get("USER") or "")
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT current_user, current_schema(), (SELECT count(*) FROM pg_roles WHERE rolname = %s)",
                           [role]).fetchone()  # fmt: skip
        if row is None or not role or row[0] == role or not row[2]:
            return
        for statement in rowsecurity.app_role_grant_sql(role, row[1]):
            conn.execute(statement)


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def database_restore(*, backup: str, target: Database, force: bool = False) -> BackupManifest:
    """Restore backup `backup` (a name, or "latest") into the database `target`, which must be empty unless
    `force` (then its tables are dropped and replaced). Platform operation, no scope. Records DATABASE_RESTORED on
    the platform chain of this process's database (which is the target after a disaster: DATABASE_URL points at
    the new server). Raises BackupError (missing, altered or undecryptable backup; target not empty) or
    PgToolError."""
    manifest = backup_get(backup)
    _restore_into(manifest, target, force=force)
    audit_event_record(
        event=EventType.DATABASE_RESTORED,
        system_principal=PRINCIPAL,
        extra={"backup": manifest.name, "backup_created_at": manifest.created_at, "target": target.name,
               "replaced": force},
    )  # fmt: skip
    return manifest


# The restore drill ---------------------------------------------------------------------------------------------


@contextmanager
def _database_alias(name: str) -> Iterator[str]:
    """A Django database alias for another database of the same server, for as long as the block runs, so that
    the ORM (and audit_chain_verify) reads the restored copy exactly as it reads the live one. The connection is
    this thread's only: it is not added to settings.DATABASES, which other threads and `connections.all()` read."""
    owner = _owner_settings(name)  # the scratch copy is the owner's; the scope's setting is sent per query
    owner["OPTIONS"] = dict(settings.DATABASE_OWNER.get("OPTIONS") or {})
    wrapper = load_backend(connection.settings_dict["ENGINE"]).DatabaseWrapper(
        {**owner, "CONN_MAX_AGE": 0}, DRILL_ALIAS
    )
    connections[DRILL_ALIAS] = wrapper
    try:
        yield DRILL_ALIAS
    finally:
        wrapper.close()
        del connections[DRILL_ALIAS]


def _rows_check(scratch: Database, manifest: BackupManifest, checks: dict[str, Any]) -> list[str]:
    with scratch.connect(autocommit=True) as conn:
        restored = _table_counts(conn)
    problems = []
    for table in sorted(set(restored) | set(manifest.tables)):
        got, want = restored.get(table), manifest.tables.get(table)
        if got != want:
            problems.append(f"table {table}: {got} rows restored, {want} in the manifest")
    checks["tables"] = len(restored)
    checks["rows"] = sum(restored.values())
    return problems


def _data_key_of(store: FileSystemStorage, blob: Blob, keks: dict[int, bytes], alias: str) -> bytes:
    """The restored blob's data key: through its study key, read from the restored key file (studies.storage.keys:
    study keys live in the stores, never in the database), or through its tenant key."""
    if blob.study_key_id is None:
        return envelope.unwrap_data_key(
            tenant_key=keks[blob.key_version], wrapped=bytes(blob.wrapped_key), tenant_id=blob.tenant_id,
            blob_id=str(blob.public_id),
        )  # fmt: skip
    row = StudyKey.objects.using(alias).get(pk=blob.study_key_id)
    name = study_key_file_name(tenant_id=row.tenant_id, key_id=row.key_id, version=row.key_version)
    with store.open(name, "rb") as handle:
        content = handle.read()
    if not content.startswith(KEY_FILE_MAGIC):
        raise envelope.DecryptionError("the restored study key file is damaged")
    wrapped = content[len(KEY_FILE_MAGIC) :]
    study_key = envelope.unwrap_study_key(
        tenant_key=keks[row.key_version], wrapped=wrapped, tenant_id=row.tenant_id, key_id=row.key_id,
        version=row.key_version,
    )  # fmt: skip
    return envelope.unwrap_data_key_by_study(
        study_key=study_key, wrapped=bytes(blob.wrapped_key), tenant_id=blob.tenant_id, blob_id=str(blob.public_id)
    )


def _blob_verify(store: FileSystemStorage, blob: Blob, keks: dict[int, bytes], alias: str) -> str:
    """Decrypt one restored blob end to end with the restored rows' keys; '' when it matches its row's SHA-256."""
    try:
        data_key = _data_key_of(store, blob, keks, alias)
        digest, size = hashlib.sha256(), 0
        with store.open(blob.storage_name, "rb") as handle:
            pieces = iter(lambda: handle.read(1 << 20), b"")
            for plain in envelope.decrypt_stream(
                pieces, data_key=data_key, tenant_id=blob.tenant_id, blob_id=str(blob.public_id)
            ):
                digest.update(plain)
                size += len(plain)
    except (KeyError, StudyKey.DoesNotExist):
        return f"blob {blob.public_id}: its tenant or study key is not in the backup"
    except OSError as exc:
        return f"blob {blob.public_id}: not in the replica ({exc.__class__.__name__})"
    except envelope.DecryptionError as exc:
        return f"blob {blob.public_id}: does not decrypt ({exc})"
    if size != blob.size or digest.hexdigest() != blob.sha256:
        return f"blob {blob.public_id}: decrypted bytes do not match the restored SHA-256"
    return ""


def _blobs_check(
    alias: str, store: FileSystemStorage, checks: dict[str, Any], *, percent: float, minimum: int
) -> list[str]:
    problems = []
    for tenant in Tenant.objects.using(alias).order_by("pk"):
        with tenant_scope(tenant):
            keks = {
                row.version: envelope.unwrap_tenant_key(
                    master_key=master_key(), wrapped=bytes(row.wrapped), tenant_id=tenant.pk, version=row.version
                )
                for row in TenantKey.objects.using(alias)
            }
            blobs = Blob.objects.using(alias).filter(kind=Blob.Kind.INSTANCE)
            total = blobs.count()
            size = min(total, max(minimum, math.ceil(total * percent / 100)))
            found = [p for p in (_blob_verify(store, b, keks, alias) for b in blobs.order_by("?")[:size]) if p]
        tenant_checks = checks["tenants"].setdefault(str(tenant.pk), {})
        tenant_checks.update({"instances": total, "blobs_sampled": size, "blobs_failed": len(found)})
        tenant_checks["problems"] = tenant_checks.get("problems", []) + found
        problems += [f"tenant {tenant.slug}: {p}" for p in found]
    checks["blobs_sampled"] = sum(t.get("blobs_sampled", 0) for t in checks["tenants"].values())
    checks["blobs_failed"] = len(problems)
    return problems


def _chains_check(alias: str, manifest: BackupManifest, checks: dict[str, Any]) -> list[str]:
    problems = []
    heads = {h["key"]: h for h in manifest.chains}
    restored = {chain.key: chain for chain in AuditChain.objects.using(alias).order_by("key")}
    for key in sorted(set(heads) | set(restored)):
        chain, head = restored.get(key), heads.get(key)
        if chain is None or head is None or (chain.last_sequence, chain.last_hash) != (
            head["last_sequence"], head["last_hash"],
        ):  # fmt: skip
            problems.append(f"audit chain {key}: its restored head differs from the manifest's")
    events = 0
    for chain in restored.values():
        if chain.key.startswith("changes:"):
            continue  # the seals over django-auditlog's entries: their head is compared above
        result = audit_chain_verify(chain=chain, using=alias)
        events += result.events
        tenant_checks = checks["tenants"].setdefault(str(chain.tenant_id), {}) if chain.tenant_id else None
        if tenant_checks is not None:
            tenant_checks["chain_events"] = result.events
        if not result.ok:
            problem = f"audit chain {chain.key}: broken at {result.first_broken_sequence} ({result.reason})"
            problems.append(problem)
            if tenant_checks is not None:
                tenant_checks["problems"] = [*tenant_checks.get("problems", []), problem]
    checks["chains"] = len(restored)
    checks["events"] = events
    return problems


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def restore_drill_run(*, sample_percent: float | None = None, sample_min: int | None = None) -> RestoreDrill:
    """Restore the latest backup into a scratch database (created, then dropped) and every file of the replica
    store (but the backups) into a scratch folder, measure the time that took, then check: each table's row count
    against the manifest; a sample of each tenant's instance blobs decrypted end to end with the restored keys and
    hashed against the restored SHA-256; every audit chain verified on the restored rows, its head equal to the
    manifest's; and the targets: the backup's age (recovery point) and the recovery time. Records a RestoreDrill
    (passed or failed, with the reasons) and RESTORE_DRILL_RUN on the platform chain (with a critical platform
    SecurityAlert when it failed) and on each tenant's. Needs the right to create databases. Platform job, no
    scope; never raises for a failed check (the row says why)."""
    percent = settings.RESTORE_DRILL_SAMPLE_PERCENT if sample_percent is None else sample_percent
    minimum = settings.RESTORE_DRILL_SAMPLE_MIN if sample_min is None else sample_min
    drill = RestoreDrill.objects.create(started_at=timezone.now())
    problems: list[str] = []
    checks: dict[str, Any] = {"sample_percent": percent, "sample_min": minimum, "tenants": {}}
    source = source_database()
    scratch = Database.from_settings(_owner_settings(f"{source.name[:40]}_drill_{uuid.uuid4().hex[:10]}"))
    folder = Path(tempfile.mkdtemp(prefix="enclave-drill-", dir=_work_dir()))
    created = False
    try:
        manifest = backup_get("latest")
        drill.backup_name, drill.backup_created_at = manifest.name, parse_datetime(manifest.created_at)
        if drill.backup_created_at is not None:
            age = (drill.started_at - drill.backup_created_at).total_seconds() / 3600
            checks["backup_age_hours"] = round(age, 2)
            if age > settings.RESTORE_DRILL_MAX_BACKUP_AGE_HOURS:
                target = settings.RESTORE_DRILL_MAX_BACKUP_AGE_HOURS
                problems.append(f"the latest backup is {age:.1f} h old (target {target:g} h)")
        started = time.monotonic()
        with source.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch.name)))
        created = True
        _restore_into(manifest, scratch, force=False)
        files, blob_bytes = replica_copy_to(folder)
        drill.recovery_seconds = time.monotonic() - started
        if drill.recovery_seconds > settings.RESTORE_DRILL_MAX_RECOVERY_SECONDS:
            target = settings.RESTORE_DRILL_MAX_RECOVERY_SECONDS
            problems.append(f"recovery took {drill.recovery_seconds:.1f} s (target {target:g} s)")
        drill.bytes_restored = manifest.size + blob_bytes
        checks["blob_files"] = files
        problems += _rows_check(scratch, manifest, checks)
        with _database_alias(scratch.name) as alias:
            problems += _blobs_check(alias, FileSystemStorage(location=folder), checks, percent=percent,
                                     minimum=minimum)  # fmt: skip
            problems += _chains_check(alias, manifest, checks)
    except (BackupError, PgToolError, psycopg.Error, OSError) as exc:
        problems.append(str(exc))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if created:
            problems += _scratch_drop(source, scratch.name)
    drill.status = RestoreDrill.Status.FAILED if problems else RestoreDrill.Status.PASSED
    drill.finished_at = timezone.now()
    drill.checks, drill.problems = checks, problems
    _drill_record(drill)
    return drill


def _scratch_drop(source: Database, name: str, *, attempts: int = 3) -> list[str]:
    """Drop the drill's scratch database; a problem (naming it, for an operator to drop) if it would not go.
    Not WITH (FORCE): that signals every backend of the database with the owner's rights, and the autovacuum
    worker a fresh restore wakes is not the owner's, so FORCE fails with "permission denied to terminate process"
    (seen on PostgreSQL 18, by the role that owns the tables and is no superuser). The plain DROP stops
    autovacuum workers itself and waits up to 5 s for other sessions; the owner's own sessions that have not yet
    gone (a closed connection's backend exits a moment later) are ended first, which the owner may do."""
    error: psycopg.Error | None = None
    for attempt in range(attempts):
        try:
            with source.connect(autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()",
                    [name],
                )
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            return []
        except psycopg.Error as exc:
            error = exc
            time.sleep(0.5 * (attempt + 1))
    return [f"the scratch database {name} was not dropped ({error.__class__.__name__}: {error}); drop it by hand"]


@transaction.atomic
def _drill_record(drill: RestoreDrill) -> None:
    drill.save(update_fields=["status", "finished_at", "backup_name", "backup_created_at", "recovery_seconds",
                              "bytes_restored", "checks", "problems"])  # fmt: skip
    outcome = Outcome.SUCCESS if drill.status == RestoreDrill.Status.PASSED else Outcome.SERIOUS_FAILURE
    summary = {
        "drill": drill.pk,
        "status": drill.status,
        "backup": drill.backup_name,
        "backup_created_at": drill.backup_created_at.isoformat() if drill.backup_created_at else "",
        "recovery_seconds": round(drill.recovery_seconds, 3) if drill.recovery_seconds is not None else None,
    }
    extra = {**summary, **{k: v for k, v in drill.checks.items() if k != "tenants"},
             "bytes_restored": drill.bytes_restored, "problems": drill.problems[:50]}  # fmt: skip
    if outcome == Outcome.SUCCESS:
        audit_event_record(event=EventType.RESTORE_DRILL_RUN, system_principal=DRILL_PRINCIPAL, extra=extra)
    else:
        # A backup that does not restore is found now, not on the day it is needed: operators must look.
        security_alert_raise(
            kind="restore_drill_failed",
            summary="Restore drill failed: " + "; ".join(drill.problems),
            event=EventType.RESTORE_DRILL_RUN,
            severity=SecurityAlert.Severity.CRITICAL,
            outcome=outcome,
            extra=extra,
            subject=drill.backup_name,
        )
    # Each tenant's trail says that the drill ran, whether it passed, and what it checked of that tenant only.
    for tenant in Tenant.objects.order_by("pk"):
        own = dict(drill.checks.get("tenants", {}).get(str(tenant.pk), {}))
        own["problems"] = own.get("problems", [])[:20]
        audit_event_record(
            event=EventType.RESTORE_DRILL_RUN,
            tenant=tenant,
            system_principal=DRILL_PRINCIPAL,
            outcome=outcome,
            outcome_description="" if outcome == Outcome.SUCCESS else "the drill failed",
            extra={**summary, **own},
        )
