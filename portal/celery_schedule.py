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
}
