"""Mail that cannot break a request (issue 8): with the mail server down, the request that caused the mail
answers 2xx with its change committed, and the mail task retries. Mail that cannot be lost: with the broker down
when the change commits, the outbox keeps the message and its sweep delivers it later, once."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from celery import current_app
from celery.signals import task_retry
from django.core import mail
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from audit.events import EventType
from tenants import services
from tenants.models import Invitation, OutboundMail, Role
from tenants.scoping import tenant_scope
from tenants.tasks import mail_send_task
from tests.tenants.helpers import events


@pytest.fixture
def closed_smtp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture
def smtp_down(settings, closed_smtp_port):
    """An SMTP backend pointed at a closed port; yields the retries of tasks seen meanwhile.

    Eager tasks here do not propagate, so that Celery's eager mode runs the retries one after the other as a
    worker would (without the waits); with propagation on (the unit-test default) the first Retry is raised
    to the on-commit hook instead, which the next test covers."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_smtp_port, 2
    retries: list[str] = []

    def count(sender=None, **kwargs):
        retries.append(getattr(sender, "name", ""))

    task_retry.connect(count, weak=False)
    propagates = current_app.conf.task_eager_propagates
    current_app.conf.task_eager_propagates = False
    yield retries
    current_app.conf.task_eager_propagates = propagates
    task_retry.disconnect(count)


def test_inviting_with_the_mail_server_down_answers_201_and_keeps_the_invitation(
    api_client_for, tenant_a, admin_a, smtp_down, django_capture_on_commit_callbacks
):
    client = api_client_for(admin_a, tenant_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/t/north/invitations/", {"email": "x@example.org", "role": Role.RADIOLOGIST}, format="json"
        )

    assert response.status_code == 201
    with tenant_scope(tenant_a):
        assert Invitation.objects.filter(email="x@example.org").exists()
    assert len(events(tenant_a, EventType.INVITATION_SENT)) == 1
    assert smtp_down == ["tenants.tasks.mail_send"] * mail_send_task.max_retries  # retried, then gave up


def test_the_members_page_says_the_invitation_is_queued_with_the_mail_server_down(
    client_for, tenant_a, admin_a, smtp_down, django_capture_on_commit_callbacks
):
    client = client_for(admin_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/t/north/members/invite/", {"email": "y@example.org", "role": Role.TECHNOLOGIST})

    assert response.status_code == 302
    assert "is queued for sending" in client.get("/t/north/members/").content.decode()
    assert smtp_down


def test_a_share_invitation_with_the_mail_server_down_commits_the_invitation(
    tenant_a, radiologist_a, settings, closed_smtp_port, django_capture_on_commit_callbacks
):
    """With eager tasks that propagate (the unit-test settings), the failed first attempt still cannot fail
    the caller: the on-commit hook is robust."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", closed_smtp_port
    from datetime import timedelta

    from django.utils import timezone

    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        invitation = services.invitation_create_for_share(
            actor=radiologist_a,
            tenant=tenant_a,
            email="outside@example.org",
            first_name="O",
            last_name="Side",
            ends_at=timezone.now() + timedelta(days=3),
            link="https://portal.example/t/north/studies/x/",
        )
    with tenant_scope(tenant_a):
        assert Invitation.objects.get(pk=invitation.pk).is_open()


def test_mail_is_sent_only_after_the_commit(tenant_a, admin_a, django_capture_on_commit_callbacks):
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.mail_queue(subject="s", body="b", to=["a@example.org", "", "a@example.org"])
        assert mail.outbox == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert [m.to for m in mail.outbox] == [["a@example.org"]]
    assert OutboundMail.objects.get().sent_at is not None


def test_nothing_is_written_or_sent_when_the_change_rolls_back(tenant_a, django_capture_on_commit_callbacks):
    def change_that_fails() -> None:
        with transaction.atomic():
            services.mail_queue(subject="s", body="b", to=["a@example.org"])
            raise RuntimeError

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        change_that_fails()
    assert mail.outbox == []
    assert not OutboundMail.objects.exists()


@pytest.fixture
def broker_down(monkeypatch):
    """Queueing fails as it does with Redis unreachable (kombu's OperationalError), for the tenants' mail only."""

    def refuse(name, /, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

    monkeypatch.setattr("tenants.services.mail.task_queue", refuse)


def _age(mail_row, *, created=None, attempted=None):
    OutboundMail.objects.filter(pk=mail_row.pk).update(
        created_at=timezone.now() - created, attempted_at=attempted and timezone.now() - attempted
    )


def test_an_invitation_mail_queued_while_the_broker_is_down_is_delivered_by_the_sweep_once(
    api_client_for, tenant_a, admin_a, broker_down, monkeypatch, django_capture_on_commit_callbacks
):
    client = api_client_for(admin_a, tenant_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/t/north/invitations/", {"email": "x@example.org", "role": Role.RADIOLOGIST}, format="json"
        )
    assert response.status_code == 201  # the broker is down: the invitation still stands
    assert mail.outbox == []
    row = OutboundMail.objects.get()
    assert (row.recipients, row.sent_at, row.attempted_at) == (["x@example.org"], None, None)

    monkeypatch.undo()  # the broker is back
    assert services.mail_outbox_sweep() == 0  # too young: its own queueing may still be on the way
    _age(row, created=timedelta(minutes=11))
    assert services.mail_outbox_sweep() == 1
    assert [m.to for m in mail.outbox] == [["x@example.org"]]
    row.refresh_from_db()
    assert row.sent_at is not None
    assert services.mail_outbox_sweep() == 0
    assert services.mail_deliver(mail_id=row.pk) is False  # a late duplicate message sends nothing
    assert len(mail.outbox) == 1


def test_the_sweep_leaves_a_mail_the_task_is_retrying_and_gives_up_after_three_days(tenant_a, caplog):
    with transaction.atomic():
        services.mail_queue(subject="s", body="b", to=["a@example.org"])  # eager: sent on commit
    sent = OutboundMail.objects.get()
    retrying = OutboundMail.objects.create(subject="r", body="b", recipients=["r@example.org"])
    _age(retrying, created=timedelta(hours=5), attempted=timedelta(minutes=50))
    abandoned = OutboundMail.objects.create(subject="g", body="b", recipients=["g@example.org"])
    _age(abandoned, created=timedelta(days=3, minutes=1), attempted=timedelta(days=2))
    assert services.mail_outbox_sweep() == 0
    assert "1 e-mails not delivered within 3 days" in caplog.text
    assert "g@example.org" not in caplog.text

    _age(retrying, created=timedelta(hours=5), attempted=timedelta(hours=2, minutes=1))  # the task gave up
    assert services.mail_outbox_sweep() == 1
    assert [m.to for m in mail.outbox][-1] == ["r@example.org"]

    OutboundMail.objects.filter(pk=sent.pk).update(created_at=timezone.now() - timedelta(days=31))
    _age(abandoned, created=timedelta(days=31))
    services.mail_outbox_sweep()
    assert set(OutboundMail.objects.values_list("pk", flat=True)) == {retrying.pk}
