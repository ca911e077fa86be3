"""The one way Enclave sends e-mail: an outbox row written with the change, delivered by a Celery task with retries.

A mail server that is down, slow or refusing never fails the request that caused the mail, and a broker that is
down loses none: `mail_queue` writes the message to the outbox (`tenants.models.OutboundMail`) in the caller's
transaction and queues its delivery after the commit (the on-commit hook is `robust`: a failure to queue is
logged, not raised); the task retries with backoff on connection and SMTP errors; and `mail_outbox_sweep`
(periodic) queues again every message not delivered in time, until MAIL_GIVE_UP after it was written. A message is
delivered at most once: `sent_at` is set in the transaction that sends it, under a row lock. E-mail is not a safe
channel for patient data: callers never put any in a message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from tenants.jobs import task_queue
from tenants.models import OutboundMail

logger = logging.getLogger(__name__)

# A message never tried (its queueing failed) is queued again after MAIL_RESEND_UNTRIED; one tried and not sent
# after MAIL_RESEND_TRIED since its last attempt (longer than the task's own longest backoff, an hour, so a
# message the task is still retrying is left to it). After MAIL_GIVE_UP the sweep stops and says so in the log;
# delivered messages are removed after MAIL_KEEP_SENT.
MAIL_RESEND_UNTRIED = timedelta(minutes=10)
MAIL_RESEND_TRIED = timedelta(hours=2)
MAIL_GIVE_UP = timedelta(days=3)
MAIL_KEEP_SENT = timedelta(days=30)
SUBJECT_MAX = 300


def _mail_send_queue(mail_id: int) -> None:
    task_queue("tenants.tasks.mail_send", mail_id=mail_id)


def mail_queue(*, subject: str, body: str, to: Iterable[str]) -> None:
    """Queue one e-mail to `to` (one message, every recipient): written to the outbox with the current
    transaction, sent after it commits and never if it rolls back. Returns at once; delivery is
    `tenants.tasks.mail_send_task`'s."""
    recipients = sorted({address.strip() for address in to if address and address.strip()})
    if not recipients:
        return
    mail = OutboundMail.objects.create(subject=subject[:SUBJECT_MAX], body=body, recipients=recipients)

    def mail_send_after_commit() -> None:
        _mail_send_queue(mail.pk)

    transaction.on_commit(mail_send_after_commit, robust=True)


def mail_deliver(*, mail_id: int) -> bool:
    """Hand the outbox message `mail_id` to the configured e-mail backend, unless it was delivered already or
    another worker is delivering it now; True when this call sent it. Raises on SMTP and connection errors,
    which the task retries."""
    now = timezone.now()
    OutboundMail.objects.filter(pk=mail_id, sent_at__isnull=True).update(attempted_at=now)  # kept if sending fails
    with transaction.atomic():
        mail = OutboundMail.objects.select_for_update(skip_locked=True).filter(pk=mail_id, sent_at__isnull=True).first()
        if mail is None:
            return False
        send_mail(
            subject=mail.subject,
            message=mail.body,
            from_email=None,
            recipient_list=mail.recipients,
            fail_silently=False,
        )
        mail.sent_at = timezone.now()
        mail.save(update_fields=["sent_at"])
    return True


def mail_outbox_sweep() -> int:
    """Queue again each message the outbox still holds unsent (its queueing failed, or the task gave up), as the
    constants above say; log the messages given up; remove every message older than MAIL_KEEP_SENT. Returns how
    many were queued."""
    now = timezone.now()
    live = OutboundMail.objects.filter(sent_at__isnull=True, created_at__gte=now - MAIL_GIVE_UP)
    due = live.filter(attempted_at__isnull=True, created_at__lt=now - MAIL_RESEND_UNTRIED) | live.filter(
        attempted_at__lt=now - MAIL_RESEND_TRIED
    )
    ids = list(due.order_by("pk").values_list("pk", flat=True))
    for mail_id in ids:
        _mail_send_queue(mail_id)
    given_up = OutboundMail.objects.filter(sent_at__isnull=True, created_at__lt=now - MAIL_GIVE_UP).count()
    if given_up:
        logger.error(
            "%d e-mails not delivered within %s: the mail server or its settings need attention", given_up, MAIL_GIVE_UP
        )
    OutboundMail.objects.filter(created_at__lt=now - MAIL_KEEP_SENT).delete()
    return len(ids)
