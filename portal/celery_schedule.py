"""Every periodic job, in one list. django-celery-beat's database scheduler loads it at start."""

from django.conf import settings

BEAT_SCHEDULE = {
    # End memberships whose end date has passed (auditors' engagements, leavers), with their sessions and
    # tokens. Access is already refused at the end date by the membership check; this makes it final.
    "memberships-end-due": {
        "task": "tenants.tasks.memberships_end_due",
        "schedule": float(settings.MEMBERSHIP_EXPIRY_INTERVAL_SECONDS),
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
}
