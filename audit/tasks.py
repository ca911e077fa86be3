"""Celery jobs of the audit app."""

from __future__ import annotations

from celery import shared_task

from audit.services import audit_changes_seal_all


@shared_task(name="audit.tasks.audit_changes_seal_all")
def audit_changes_seal_all_task() -> int:
    """Platform job (every tenant, no scope needed: LogEntry and the seals are not tenant-scoped models)."""
    return audit_changes_seal_all()
