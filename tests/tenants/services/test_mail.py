"""Mail that cannot break a request (issue 8): with the mail server down, the request that caused the mail
answers 2xx with its change committed, and the mail task retries."""

from __future__ import annotations

import socket

import pytest
from celery import current_app
from celery.signals import task_retry
from django.core import mail

from audit.events import EventType
from tenants import services
from tenants.models import Invitation, Role
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
