"""The one way Enclave sends e-mail: queued after the commit, delivered by a Celery task with retries.

A mail server that is down, slow or refusing never fails the request that caused the mail: the change is
already committed, the task retries with backoff on connection and SMTP errors, and even a failure to queue
(a broker that is down, or an eager task that gave up) is logged, not raised, because the on-commit hook is
registered `robust`. E-mail is not a safe channel for patient data: callers never put any in a message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.core.mail import send_mail
from django.db import transaction

from tenants.jobs import task_queue

logger = logging.getLogger(__name__)


def mail_queue(*, subject: str, body: str, to: Iterable[str]) -> None:
    """Queue one e-mail to `to` (one message, every recipient), sent after the current transaction commits and
    never if it rolls back. Returns at once; delivery is `tenants.tasks.mail_send_task`'s."""
    recipients = sorted({address.strip() for address in to if address and address.strip()})
    if not recipients:
        return

    def mail_send_after_commit() -> None:
        task_queue("tenants.tasks.mail_send", subject=subject, body=body, to=recipients)

    transaction.on_commit(mail_send_after_commit, robust=True)


def mail_deliver(*, subject: str, body: str, to: list[str]) -> int:
    """Hand one message to the configured e-mail backend (the task's work). Raises on SMTP and connection
    errors, which the task retries."""
    return send_mail(subject=subject, message=body, from_email=None, recipient_list=to, fail_silently=False)
