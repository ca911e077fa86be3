"""Reminders: 30 days, 7 days and on the day a required training expires, once per expiry and stage however
often the job runs, with a copy to compliance officers and administrators."""

from __future__ import annotations

from datetime import timedelta

from django.core import mail

from audit.events import EventType
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.training.helpers import events, record, require, today
from training import services
from training.models import ReminderSent
from training.tasks import training_reminders_task


def test_each_stage_is_mailed_once_and_officers_are_copied(tenant_a, compliance_a, radiologist_a, technologist_a,
                                                           make_member, hipaa_required,
                                                           django_capture_on_commit_callbacks):  # fmt: skip
    require(tenant_a, compliance_a, hipaa_required.course, role=Role.TECHNOLOGIST)
    late = make_member(tenant_a, Role.RADIOLOGIST, "north-late")
    record(tenant_a, compliance_a, radiologist_a, hipaa_required.course, expires_on=today() + timedelta(days=30))
    record(tenant_a, compliance_a, technologist_a, hipaa_required.course, expires_on=today() + timedelta(days=7))
    record(tenant_a, compliance_a, late, hipaa_required.course, expires_on=today())
    mail.outbox.clear()

    # Mail is queued when the transaction commits (tenants.services.mail_queue): run those hooks as a commit would.
    with django_capture_on_commit_callbacks(execute=True):
        assert training_reminders_task.delay().get() >= 1  # eager in unit tests: the fan-out runs each tenant inline
        assert training_reminders_task.delay().get() >= 1  # and again: nothing is sent twice

    with tenant_scope(tenant_a):
        sent = sorted((r.user.username, r.stage) for r in ReminderSent.objects.select_related("user"))
    assert sent == [("north-late", "0"), ("north-radiologist", "30"), ("north-technologist", "7")]
    personal = [m for m in mail.outbox if m.subject.startswith("Your training")]
    assert sorted(m.to[0] for m in personal) == sorted(u.email for u in (radiologist_a, technologist_a, late))
    assert any("expires today" in m.subject for m in personal)
    copies = [m for m in mail.outbox if m.subject.startswith("Training expiring")]
    assert len(copies) == 3
    assert all(compliance_a.email in m.to for m in copies)
    sent_events = events(tenant_a, EventType.TRAINING_REMINDER_SENT)
    assert len([e for e in sent_events if "stage" in e.extra]) == 3
    # and one weekly digest to the compliance officers, however often the job ran this week
    digests = [m for m in mail.outbox if m.subject.startswith("Training digest")]
    assert len(digests) == 1
    assert digests[0].to == [compliance_a.email]
    assert "north-late (Radiologist): HIPAA Security Awareness, expired" in digests[0].body
    assert len([e for e in sent_events if "digest_week_of" in e.extra]) == 1


def test_other_days_send_nothing(tenant_a, compliance_a, radiologist_a, hipaa_required):
    record(tenant_a, compliance_a, radiologist_a, hipaa_required.course, expires_on=today() + timedelta(days=20))
    mail.outbox.clear()
    with tenant_scope(tenant_a):
        assert services.training_reminders_send() == 0
    assert mail.outbox == []


def test_the_digest_goes_again_the_next_week(tenant_a, compliance_a, radiologist_a, hipaa_required,
                                             django_capture_on_commit_callbacks):  # fmt: skip
    mail.outbox.clear()
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        assert services.training_digest_send(today=today()) is True
        assert services.training_digest_send(today=today()) is False
        assert services.training_digest_send(today=today() + timedelta(days=7)) is True
    digests = [m for m in mail.outbox if m.subject.startswith("Training digest")]
    assert len(digests) == 2
    assert "north-radiologist (Radiologist): HIPAA Security Awareness, missing (never completed), access blocked" in (
        digests[0].body
    )
