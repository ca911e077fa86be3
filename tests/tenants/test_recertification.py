"""Periodic access recertification (SECURITY.md B6), through the real job, services and pages: a campaign per
tenant lists every membership, administrators confirm or revoke (never their own), a reminder goes once, and at
the deadline what was not confirmed ends (the last administrator's is kept), each step audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from audit.events import EventType
from tenants.models import Membership, RecertificationCampaign, RecertificationItem, Role
from tenants.scoping import tenant_scope
from tenants.tasks import recertification_all_task, tenant_recertification_task
from tests.tenants.helpers import events, last_event, membership_of

pytestmark = pytest.mark.django_db

URL = "/t/north/members/review/"


def _items(tenant) -> dict[str, RecertificationItem]:
    with tenant_scope(tenant):
        campaign = RecertificationCampaign.objects.get(closed_at__isnull=True)
        return {i.membership.user.username: i for i in campaign.items.select_related("membership__user")}


def _later(days: float):
    return timezone.now() + timedelta(days=days)


def test_the_job_opens_one_campaign_per_tenant_listing_every_membership(
    tenant_a, tenant_b, admin_a, radiologist_a, admin_b, settings, django_capture_on_commit_callbacks
):
    radiologist_a.last_login = timezone.now() - timedelta(days=120)
    radiologist_a.save(update_fields=["last_login"])
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert recertification_all_task() == 2  # eager: each tenant's task ran
    items = _items(tenant_a)
    assert set(items) == {"north-admin", "north-radiologist"}
    assert items["north-radiologist"].role == Role.RADIOLOGIST
    assert items["north-radiologist"].last_login == radiologist_a.last_login
    assert set(_items(tenant_b)) == {"south-admin"}
    opened = last_event(tenant_a, EventType.RECERTIFICATION_OPENED)
    assert opened.extra["memberships"] == 2
    assert opened.system_principal == "enclave:recertification"
    assert sorted(m.to[0] for m in mail.outbox) == sorted([admin_a.email, admin_b.email])
    assert "/t/north/members/review/" in next(m.body for m in mail.outbox if m.to == [admin_a.email])
    # Idempotent: a second run the same day opens nothing and mails nobody.
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert tenant_recertification_task(tenant_id=tenant_a.pk) == {"ended": 0, "reminded": 0, "opened": 0}
    assert mail.outbox == []
    with tenant_scope(tenant_a):
        assert RecertificationCampaign.objects.count() == 1


def test_an_administrator_confirms_and_revokes_on_the_page(
    client_for, tenant_a, admin_a, radiologist_a, technologist_a, make_member
):
    tenant_recertification_task(tenant_id=tenant_a.pk)
    items = _items(tenant_a)
    admin = client_for(admin_a)
    assert URL in admin.get("/t/north/members/").content.decode()  # reached from the members page
    page = admin.get(URL).content.decode()
    assert "north-radiologist" in page
    assert f"{URL}{items['north-radiologist'].public_id}/decide/" in page
    assert f"{URL}{items['north-admin'].public_id}/decide/" not in page  # not one's own

    confirmed = admin.post(f"{URL}{items['north-radiologist'].public_id}/decide/", {"decision": "confirm"})
    revoked = admin.post(f"{URL}{items['north-technologist'].public_id}/decide/", {"decision": "revoke"})

    assert confirmed.status_code == revoked.status_code == 302
    decided = _items(tenant_a)
    assert decided["north-radiologist"].decision == "confirmed"
    assert decided["north-radiologist"].decided_by == admin_a
    assert decided["north-technologist"].decision == "revoked"
    assert membership_of(technologist_a, tenant_a).status == Membership.Status.ENDED
    assert membership_of(radiologist_a, tenant_a).status == Membership.Status.ACTIVE
    audited = events(tenant_a, EventType.RECERTIFICATION_DECIDED)
    assert [(e.actor_user, e.extra["decision"]) for e in audited] == [(admin_a, "confirmed"), (admin_a, "revoked")]
    assert audited[1].target_id == str(membership_of(technologist_a, tenant_a).public_id)
    assert last_event(tenant_a, EventType.MEMBERSHIP_ENDED).actor_user == admin_a
    # Decided once: a second decision, one's own access, or a made-up decision is refused with the reason.
    again = admin.post(f"{URL}{items['north-radiologist'].public_id}/decide/", {"decision": "revoke"})
    own = admin.post(f"{URL}{items['north-admin'].public_id}/decide/", {"decision": "confirm"})
    bogus = admin.post(f"{URL}{items['north-admin'].public_id}/decide/", {"decision": "approve-all"})
    assert again.status_code == own.status_code == bogus.status_code == 400
    assert "Already decided" in again.content.decode()
    assert "Another administrator" in own.content.decode()
    assert membership_of(radiologist_a, tenant_a).status == Membership.Status.ACTIVE


def test_a_reminder_goes_once_before_the_deadline(
    tenant_a, admin_a, radiologist_a, settings, django_capture_on_commit_callbacks
):
    tenant_recertification_task(tenant_id=tenant_a.pk)
    from tenants.services import recertification_remind

    mail.outbox.clear()
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        assert recertification_remind(tenant=tenant_a, now=_later(1)) == 0  # too early
        reminder_day = _later(settings.RECERTIFICATION_WINDOW_DAYS - settings.RECERTIFICATION_REMINDER_DAYS + 0.5)
        assert recertification_remind(tenant=tenant_a, now=reminder_day) == 1
        assert recertification_remind(tenant=tenant_a, now=reminder_day) == 0
    assert [m.to for m in mail.outbox] == [[admin_a.email]]
    assert "Reminder" in mail.outbox[0].subject
    assert len(events(tenant_a, EventType.RECERTIFICATION_REMINDER_SENT)) == 1


def test_at_the_deadline_unconfirmed_access_ends_and_confirmed_access_stays(
    client_for, tenant_a, admin_a, radiologist_a, technologist_a, make_member, settings
):
    other_admin = make_member(tenant_a, Role.TENANT_ADMIN, "north-admin-2")
    tenant_recertification_task(tenant_id=tenant_a.pk)
    items = _items(tenant_a)
    admin = client_for(admin_a)
    confirmed = admin.post(f"{URL}{items['north-radiologist'].public_id}/decide/", {"decision": "confirm"})
    assert confirmed.status_code == 302
    technologist_page = client_for(technologist_a)
    assert technologist_page.get("/t/north/studies/").status_code == 200

    from tenants.services import recertification_close_due

    with tenant_scope(tenant_a):
        assert recertification_close_due(tenant=tenant_a, now=_later(1)) == 0  # not yet
        ended = recertification_close_due(tenant=tenant_a, now=_later(settings.RECERTIFICATION_WINDOW_DAYS + 0.01))
    # Technologist and both administrators were pending: the technologist and one administrator end, the last
    # administrator is kept.
    assert ended == 2
    after = {name: item.decision for name, item in _closed_items(tenant_a).items()}
    assert after["north-radiologist"] == "confirmed"
    assert after["north-technologist"] == "expired"
    assert sorted([after["north-admin"], after["north-admin-2"]]) == ["expired", "kept"]
    assert membership_of(technologist_a, tenant_a).status == Membership.Status.ENDED
    assert membership_of(radiologist_a, tenant_a).status == Membership.Status.ACTIVE
    statuses = {membership_of(u, tenant_a).status for u in (admin_a, other_admin)}
    assert statuses == {Membership.Status.ACTIVE, Membership.Status.ENDED}
    # Their last membership: the account is deactivated and its sessions end.
    assert technologist_page.get("/t/north/studies/")["Location"].startswith("/accounts/login/")
    closed = last_event(tenant_a, EventType.RECERTIFICATION_CLOSED)
    assert closed.extra["ended"] == 2
    assert closed.extra["kept_last_administrator"] == 1
    ended_events = [e for e in events(tenant_a, EventType.MEMBERSHIP_ENDED) if e.system_principal]
    assert {e.system_principal for e in ended_events} == {"enclave:recertification"}
    assert len(ended_events) == 2
    with tenant_scope(tenant_a):
        assert recertification_close_due(tenant=tenant_a, now=_later(30)) == 0  # closed once


def _closed_items(tenant) -> dict[str, RecertificationItem]:
    with tenant_scope(tenant):
        campaign = RecertificationCampaign.objects.get(closed_at__isnull=False)
        return {i.membership.user.username: i for i in campaign.items.select_related("membership__user")}


def test_a_member_without_manage_members_is_refused_and_recorded(client_for, tenant_a, admin_a, compliance_a):
    tenant_recertification_task(tenant_id=tenant_a.pk)
    item = _items(tenant_a)["north-admin"]
    officer = client_for(compliance_a)
    assert officer.get(URL).status_code == 403
    assert officer.post(f"{URL}{item.public_id}/decide/", {"decision": "revoke"}).status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == compliance_a
    assert membership_of(admin_a, tenant_a).status == Membership.Status.ACTIVE
    assert _items(tenant_a)["north-admin"].decision == "pending"


def test_another_tenants_review_is_not_reachable(client_for, tenant_a, tenant_b, admin_a, radiologist_a, admin_b):
    tenant_recertification_task(tenant_id=tenant_a.pk)
    item = _items(tenant_a)["north-radiologist"]
    south = client_for(admin_b)
    assert south.get(URL).status_code == 404  # not a member of north
    foreign = south.post(f"/t/south/members/review/{item.public_id}/decide/", {"decision": "revoke"})
    missing = south.post("/t/south/members/review/00000000-0000-4000-8000-000000000000/decide/", {"decision": "revoke"})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert membership_of(radiologist_a, tenant_a).status == Membership.Status.ACTIVE
