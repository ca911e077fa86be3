"""Every periodic job, in one list. django-celery-beat's database scheduler loads it at start."""

from celery.schedules import crontab
from django.conf import settings

BEAT_SCHEDULE = {
    # End memberships whose end date has passed (auditors' engagements, leavers), with their sessions and
    # tokens. Access is already refused at the end date by the membership check; this makes it final.
    "memberships-end-due": {
        "task": "tenants.tasks.memberships_end_due",
        "schedule": float(settings.MEMBERSHIP_EXPIRY_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Access recertification (SECURITY.md B6): per tenant, close a review past its deadline (unconfirmed access
    # ends), remind the administrators before it, open the next one every RECERTIFICATION_INTERVAL_DAYS. Daily.
    "recertification": {
        "task": "tenants.tasks.recertification_all",
        "schedule": crontab(hour=6, minute=0),
        "options": {"queue": "maintenance"},
    },
    # Queue again any ingest item left `received` or `processing` too long (a lost broker message, a killed
    # worker): the database, not Redis, is the record of work to do.
    "ingest-sweep": {
        "task": "studies.tasks.ingest_sweep",
        "schedule": float(settings.INGEST_SWEEP_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Close passed read-folding windows: one "N further reads folded" audit event per window, so folded frame and
    # image reads reach the trail even when the reader never comes back (studies.services.reads).
    "read-tallies-flush": {
        "task": "studies.tasks.read_tallies_flush",
        "schedule": float(settings.READ_AUDIT_FLUSH_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Queue again the e-mails of the outbox not delivered in time (a broker down when their change committed, a
    # delivery task that gave up), so a break-glass notice or an invitation is never lost (tenants.services.mail).
    "mail-outbox-sweep": {
        "task": "tenants.tasks.mail_outbox_sweep",
        "schedule": 600.0,
        "options": {"queue": "maintenance"},
    },
    # Record the end (110138) of break-glass grants past their expiry. Access already stopped at the expiry
    # (the visibility rule); this puts the end on the audit trail within a minute.
    "break-glass-expire": {
        "task": "studies.tasks.break_glass_expire",
        "schedule": float(settings.BREAK_GLASS_EXPIRY_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Raise a security alert for each device wipe order open longer than its tenant's policy allows (issue 11).
    "wipe-orders-overdue": {
        "task": "devices.tasks.wipe_orders_overdue",
        "schedule": 3600.0,
        "options": {"queue": "maintenance"},
    },
    # Remove the guardian grants of expired shares. Tidiness only: an expired share stops working at once.
    "shares-cleanup": {
        "task": "studies.tasks.shares_cleanup",
        "schedule": float(settings.SHARE_CLEANUP_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Training reminders: mail people whose required training expires in 30 or 7 days or today, once per expiry
    # and stage (a unique row claims each), with a copy to compliance officers and administrators; and once a
    # week a digest of lapsed and expiring training to the compliance officers. Daily.
    "training-reminders": {
        "task": "training.tasks.training_reminders",
        "schedule": crontab(hour=6, minute=0),
        "options": {"queue": "maintenance"},
    },
    # Propose for deletion the studies past their tenant's retention, with no legal hold (issue 13); nothing is
    # deleted until two people approve. Idempotent: a study with an open proposal is not proposed again. Daily.
    "retention-proposals": {
        "task": "studies.tasks.retention_proposals_make",
        "schedule": crontab(hour=2, minute=30),
        "options": {"queue": "maintenance"},
    },
    # Seal django-auditlog entries that the on-commit sealing missed (a process killed between commit and seal),
    # so that audit_verify finds none unsealed past AUDIT_SEAL_GRACE_SECONDS.
    "audit-changes-seal": {
        "task": "audit.tasks.audit_changes_seal_all",
        "schedule": float(settings.AUDIT_SEAL_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Evaluate the security rules (repeated failed sign-ins, lockouts, bursts of refusals) over each tenant's
    # recent events and raise SecurityAlerts; idempotent, so a late or doubled run raises nothing twice.
    "security-rules-evaluate": {
        "task": "audit.tasks.security_rules_evaluate_all",
        "schedule": float(settings.SECURITY_RULES_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Sign every audit chain's head once a day (HMAC, key from the environment) so that a rewritten or truncated
    # trail no longer reaches a signed head (audit_verify checks).
    "audit-digests-sign": {
        "task": "audit.tasks.audit_digests_sign",
        "schedule": 24 * 3600.0,
        "options": {"queue": "maintenance"},
    },
    # Write the new signed digests and each closed month of events to the WORM store (Object Lock, compliance
    # mode, six years), then check every copy there; after the digests are signed. Off without AUDIT_WORM_STORE.
    "audit-worm-anchor": {
        "task": "audit.tasks.audit_worm_anchor",
        "schedule": crontab(hour=2, minute=30),
        "options": {"queue": "maintenance"},
    },
    # Make the audit events' monthly partitions ahead (this month and AUDIT_PARTITION_MONTHS_AHEAD more; a month
    # with its partition is skipped), so that no event lands in the default partition. Daily.
    "audit-partitions-ensure": {
        "task": "audit.tasks.audit_partitions_ensure",
        "schedule": crontab(hour=1, minute=15),
        "options": {"queue": "maintenance"},
    },
    # Forward new audit events to the hospital's audit repository (RFC 5424 syslog), in order, from where the
    # last run stopped; a receiver that is down is retried on the next run.
    "audit-syslog-forward": {
        "task": "audit.tasks.audit_syslog_forward",
        "schedule": float(settings.AUDIT_SYSLOG_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Remind the compliance officers of incident notification deadlines (HITECH: 60 days), each reminder once.
    "incident-reminders": {
        "task": "audit.tasks.incident_reminders_all",
        "schedule": crontab(hour=7, minute=0),
        "options": {"queue": "maintenance"},
    },
    # Verify every tenant's trail (chains, change seals, digests) each night; a failure raises a critical alert.
    "audit-verify": {
        "task": "audit.tasks.audit_verify_all",
        "schedule": 24 * 3600.0,
        "options": {"queue": "maintenance"},
    },
    # Fixity (SECURITY.md A7): re-read each tenant's next share of blobs, both copies decrypted and hash-checked, so
    # that every blob is checked once per BLOB_FIXITY_CYCLE_DAYS; a bad copy is alerted and repaired from the good
    # one. A cursor row per tenant keeps the place, so a late or doubled run skips or repeats nothing.
    "blob-fixity-check": {
        "task": "studies.tasks.blob_fixity_check_all",
        "schedule": float(settings.BLOB_FIXITY_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Replica catch-up: the guarantee that every blob is in the replica. Copies the blobs never replicated (the
    # replica store failed at write time) and those whose replica file is missing.
    "blob-replicas-catch-up": {
        "task": "studies.tasks.blob_replicas_catch_up_all",
        "schedule": float(settings.BLOB_CATCHUP_INTERVAL_SECONDS),
        "options": {"queue": "maintenance"},
    },
    # Remove ciphertext no row references (a worker killed between writing and committing) once older than
    # BLOB_ORPHAN_GRACE_SECONDS. Daily.
    "blob-orphans-remove": {
        "task": "studies.tasks.blob_orphans_remove_all",
        "schedule": crontab(hour=3, minute=15),
        "options": {"queue": "maintenance"},
    },
    # Back the database up (pg_dump of one snapshot, encrypted, to the replica store; README "Backups") and delete
    # the backups older than BACKUP_KEEP_DAILY days. Daily at BACKUP_HOUR:BACKUP_MINUTE UTC.
    "database-backup": {
        "task": "studies.tasks.database_backup",
        "schedule": crontab(hour=settings.BACKUP_HOUR, minute=settings.BACKUP_MINUTE),
        "options": {"queue": "maintenance"},
    },
    # Restore the latest backup into a scratch database and folder and check it (SECURITY.md B8): row counts, a
    # sample of blobs decrypted end to end, every audit chain. Weekly, two hours after that day's backup.
    "restore-drill": {
        "task": "studies.tasks.restore_drill",
        "schedule": crontab(
            day_of_week=settings.RESTORE_DRILL_WEEKDAY,
            hour=(settings.BACKUP_HOUR + 2) % 24,
            minute=settings.BACKUP_MINUTE,
        ),
        "options": {"queue": "maintenance"},
    },
}
