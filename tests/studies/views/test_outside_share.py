"""Sharing a study with an outside physician is an invitation (issue 8, security review #3 applied to shares):
the clinician's answer is the same whether or not an account has the address, names no account and nothing of
another tenant; nobody joins this tenant, and nothing is shared, until the person accepts signed in with TOTP;
then the share is in force, and revoking it still works. Through HTTP: the page and the REST API."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlparse

import pytest
from django.core import mail
from django.test import Client

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import ShareInvitation, StudyShare
from tenants import access
from tenants.models import Invitation, Membership, Role, User
from tenants.scoping import tenant_scope
from tests.conftest import verified_client
from tests.studies.access_fixtures import referrer_make, study_make
from tests.tenants.helpers import events, last_event, membership_of

pytestmark = pytest.mark.django_db

ACCEPT = "/invitations/accept/"
NEW_PASSWORD = "pale orange lantern over quiet harbour"


@pytest.fixture
def south_referrer(make_member, tenant_b):
    return make_member(tenant_b, Role.REFERRING_PHYSICIAN, "south-referrer")


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)


def page_url(study, tenant="north") -> str:
    return f"/t/{tenant}/studies/{study.public_id}/access/"


def api_url(study, tenant="north") -> str:
    return f"/api/v1/t/{tenant}/studies/{study.public_id}/shares/invitations/"


def outside(email: str, days: int = 3) -> dict:
    return {"action": "outside", "email": email, "first_name": "Sam", "last_name": "Outside", "days": days}


def link_for(email: str) -> str:
    (message,) = [m for m in mail.outbox if m.to == [email]]
    return urlparse(re.search(r"https?://\S+/invitations/inv_\S+/", message.body).group(0)).path


def not_a_member(user: User, tenant) -> bool:
    with tenant_scope(tenant):
        return not Membership.objects.filter(user=user).exists()


def post_and_tell(client, url, data) -> tuple[int, str, list[str]]:
    """Post, then open the page it sends to: the status, where it sent, and the messages shown there."""
    response = client.post(url, data)
    shown = client.get(response["Location"]) if response.status_code == 302 else response
    messages = [str(m).replace(data["email"], "<email>") for m in shown.context["messages"]]
    return response.status_code, response.get("Location", ""), messages


def test_the_page_answers_the_same_for_an_account_of_another_tenant_and_an_unknown_address(
    tenant_a, tenant_b, radiologist_a, south_referrer, client_for, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a)
    clinician = client_for(radiologist_a)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        known = post_and_tell(clinician, page_url(study), outside(south_referrer.email))
        unknown = post_and_tell(clinician, page_url(study), outside("nobody@clinic.example"))
    assert known == unknown
    assert known[:2] == (302, page_url(study))
    assert "Nothing is granted before" in known[2][0]
    shown = clinician.get(page_url(study)).content.decode().replace(south_referrer.email, "<email>")
    for leak in ("south", "South", "deactivated", "already a member"):
        assert leak not in shown
    assert not User.objects.filter(username="nobody@clinic.example").exists()  # no account made up front
    # south-referrer is not a north member, sees nothing, and north's trail names only the address
    assert not_a_member(south_referrer, tenant_a)
    assert client_for(south_referrer).get(f"/t/north/studies/{study.public_id}/").status_code == 404
    with tenant_scope(tenant_a):
        assert not StudyShare.objects.exists()
        assert not AuditEvent.objects.filter(event_type__in=[EventType.MEMBER_ADDED, EventType.STUDY_SHARED]).exists()
    sent = events(tenant_a, EventType.INVITATION_SENT)
    assert [e.actor_user for e in sent] == [radiologist_a, radiologist_a]
    participants = sent[0].participants
    assert {"type": "email", "id": south_referrer.email, "role": "invitee"} in [
        {k: p.get(k) for k in ("type", "id", "role")} for p in participants
    ]
    assert str(study.study_instance_uid) in str(participants)  # what was offered is on the trail
    assert str(south_referrer.pk) not in str([p for p in participants if p.get("type") == "email"])
    assert events(tenant_b, EventType.INVITATION_SENT) == []
    assert study.patient.name not in mail.outbox[0].body


def test_after_acceptance_with_totp_the_share_is_in_force_and_revocation_still_works(
    tenant_a, tenant_b, radiologist_a, south_referrer, client_for, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a)
    clinician = client_for(radiologist_a)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        clinician.post(page_url(study), outside(south_referrer.email, days=4))
    link = link_for(south_referrer.email)
    assert "Waiting for acceptance" in clinician.get(page_url(study)).content.decode()

    # Signed in with a password only (no second factor): sent to sign in, nothing changes.
    half = Client()
    half.force_login(south_referrer)
    half.get(link)
    asked = half.post(ACCEPT, {"action": "accept"})
    assert asked.status_code == 302
    assert asked["Location"].startswith("/accounts/login/")
    assert not_a_member(south_referrer, tenant_a)

    browser = client_for(south_referrer)  # password and TOTP
    assert browser.get(link).status_code == 302
    accepted = browser.post(ACCEPT, {"action": "accept"})
    assert accepted.status_code == 302
    assert accepted["Location"] == "/t/north/"

    membership = membership_of(south_referrer, tenant_a)
    assert membership.role == Role.REFERRING_PHYSICIAN
    with tenant_scope(tenant_a):
        share = StudyShare.objects.get()
        pending = ShareInvitation.objects.get()
        assert (share.grantee, share.granted_by) == (south_referrer, radiologist_a)
        assert pending.share == share
        assert membership.ends_at == share.expires_at == pending.expires_at
        assert access.has_perm(south_referrer, "studies.view_study", study)
    assert browser.get(f"/t/north/studies/{study.public_id}/").status_code == 200
    assert browser.get("/t/south/").status_code == 200  # the other tenant is left alone
    shared = last_event(tenant_a, EventType.STUDY_SHARED)
    assert shared.actor_user == south_referrer
    assert shared.extra["via"] == "invitation"
    assert last_event(tenant_a, EventType.INVITATION_ACCEPTED).extra["purpose"] == "share"
    assert events(tenant_b, EventType.STUDY_SHARED) == []
    assert "Waiting for acceptance" not in clinician.get(page_url(study)).content.decode()

    revoked = clinician.post(f"{page_url(study)}shares/{share.public_id}/revoke/")
    assert revoked.status_code == 302
    assert browser.get(f"/t/north/studies/{study.public_id}/").status_code == 404
    assert last_event(tenant_a, EventType.SHARE_REVOKED).actor_user == radiologist_a
    assert client_for(south_referrer).get(link).status_code == 400  # single use


def test_an_unknown_address_accepts_with_a_new_account_and_gets_the_share(
    tenant_a, radiologist_a, client_for, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        client_for(radiologist_a).post(page_url(study), outside("new.doc@clinic.example"))
    browser = Client()
    browser.get(link_for("new.doc@clinic.example"))
    created = browser.post(
        ACCEPT, {"action": "create", "username": "newdoc", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    )
    assert created.status_code == 302
    assert created["Location"].startswith("/accounts/login/")
    newdoc = User.objects.get(username="newdoc")
    assert membership_of(newdoc, tenant_a).role == Role.REFERRING_PHYSICIAN
    with tenant_scope(tenant_a):
        assert StudyShare.objects.get().grantee == newdoc
    # MFA is still needed: a session with the password alone goes to the second factor
    unverified = Client()
    unverified.force_login(newdoc)
    response = unverified.get(f"/t/north/studies/{study.public_id}/")
    assert response.status_code == 302
    assert "/accounts/" in response["Location"]
    assert client_for(newdoc).get(f"/t/north/studies/{study.public_id}/").status_code == 200


def test_a_deactivated_account_and_a_current_member_get_the_same_answer(
    tenant_a, radiologist_a, referrer_a, make_member, tenant_b, client_for, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a)
    gone = make_member(tenant_b, Role.RADIOLOGIST, "gone-doc")
    gone.is_active = False
    gone.save(update_fields=["is_active"])
    clinician = client_for(radiologist_a)
    answers = []
    mail.outbox.clear()
    for email in (gone.email, referrer_a.email, "x@clinic.example"):
        with django_capture_on_commit_callbacks(execute=True):
            answers.append(post_and_tell(clinician, page_url(study), outside(email)))
    assert answers[0] == answers[1] == answers[2]
    assert not_a_member(gone, tenant_a)
    # The current member accepts: the membership stays as it was, the share is made.
    before = membership_of(referrer_a, tenant_a)
    browser = client_for(referrer_a)
    browser.get(link_for(referrer_a.email))
    assert browser.post(ACCEPT, {"action": "accept"}).status_code == 302
    after = membership_of(referrer_a, tenant_a)
    assert (after.role, after.ends_at) == (before.role, before.ends_at)
    assert browser.get(f"/t/north/studies/{study.public_id}/").status_code == 200


def test_the_sharer_losing_the_right_before_acceptance_makes_nothing(
    tenant_a, radiologist_a, admin_a, south_referrer, client_for, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        client_for(radiologist_a).post(page_url(study), outside(south_referrer.email))
    with tenant_scope(tenant_a):
        from tenants import services as tenant_services

        tenant_services.membership_end(actor=admin_a, membership=membership_of(radiologist_a, tenant_a), reason="x")
    browser = client_for(south_referrer)
    browser.get(link_for(south_referrer.email))
    refused = browser.post(ACCEPT, {"action": "accept"})
    assert refused.status_code == 400
    assert "may no longer share it" in refused.content.decode()
    assert not_a_member(south_referrer, tenant_a)
    with tenant_scope(tenant_a):
        assert not StudyShare.objects.exists()


def test_another_tenant_404_and_a_member_without_the_right_403_recorded(
    tenant_a, tenant_b, referrer_a, outsider_b, client_for, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a)
    own = study_make(tenant_a, referring_key="DOE^JOHN")  # the referrer sees it but may not share
    with django_capture_on_commit_callbacks(execute=True):
        foreign = client_for(outsider_b).post(page_url(study, "south"), outside("a@clinic.example"))
        other_tenant = client_for(outsider_b).post(page_url(study), outside("a@clinic.example"))
        refused = client_for(referrer_a).post(page_url(own), outside("a@clinic.example"))
    assert foreign.status_code == other_tenant.status_code == 404
    assert refused.status_code == 403
    with tenant_scope(tenant_a):
        denied = AuditEvent.objects.get(event_type=EventType.ACCESS_DENIED)
        assert denied.actor_user == referrer_a
        assert not Invitation.objects.exists()
    with tenant_scope(tenant_b):
        assert not Invitation.objects.exists()


def test_the_api_answers_the_same_and_keeps_the_doors(
    tenant_a, tenant_b, radiologist_a, referrer_a, outsider_b, south_referrer, api_client_for,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    study = study_make(tenant_a)
    client = api_client_for(radiologist_a, tenant_a)
    body = {"first_name": "Sam", "last_name": "Outside", "days": 2}
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        known = client.post(api_url(study), {**body, "email": south_referrer.email}, format="json")
        unknown = client.post(api_url(study), {**body, "email": "nobody@clinic.example"}, format="json")
    assert known.status_code == unknown.status_code == 202, known.content

    def shape(response, email):
        data = response.json()
        return {
            k: (v.replace(email, "<email>") if isinstance(v, str) else v)
            for k, v in data.items()
            if k not in {"id", "share_expires_at", "invitation_expires_at"}
        }

    assert shape(known, south_referrer.email) == shape(unknown, "nobody@clinic.example")
    assert known.json()["status"] == "pending"
    assert "south" not in known.content.decode().replace(south_referrer.email, "<email>")
    assert not_a_member(south_referrer, tenant_a)

    browser = verified_client(south_referrer)
    browser.get(link_for(south_referrer.email))
    assert browser.post(ACCEPT, {"action": "accept"}).status_code == 302
    with tenant_scope(tenant_a):
        share = StudyShare.objects.get(grantee=south_referrer)
    assert verified_client(south_referrer).get(f"/t/north/studies/{study.public_id}/").status_code == 200
    assert client.delete(f"/api/v1/t/north/studies/{study.public_id}/shares/{share.public_id}/").status_code == 204
    with tenant_scope(tenant_a):
        assert not access.has_perm(south_referrer, "studies.view_study", study)

    own = study_make(tenant_a, referring_key="DOE^JOHN")
    refused = api_client_for(referrer_a, tenant_a).post(api_url(own), {**body, "email": "a@b.example"}, format="json")
    assert refused.status_code == 403
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED, actor_user=referrer_a).count() == 1
    other = api_client_for(outsider_b, tenant_b)
    foreign = other.post(api_url(study, "south"), {**body, "email": "a@b.example"}, format="json")
    missing = other.post(
        f"/api/v1/t/south/studies/{uuid.uuid4()}/shares/invitations/", {**body, "email": "a@b.example"}, format="json"
    )
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    bad = client.post(api_url(study), {**body, "email": "not-an-email"}, format="json")
    assert bad.status_code == 400, bad.content


def test_a_pending_share_can_be_withdrawn_on_the_page_and_by_the_api(
    tenant_a, tenant_b, radiologist_a, referrer_a, outsider_b, south_referrer, client_for, api_client_for,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    study = study_make(tenant_a)
    clinician = client_for(radiologist_a)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        clinician.post(page_url(study), outside(south_referrer.email))
        created = api_client_for(radiologist_a, tenant_a).post(
            api_url(study), {"email": "other@clinic.example", "first_name": "O", "last_name": "T", "days": 2},
            format="json",
        )  # fmt: skip
    with tenant_scope(tenant_a):
        by_page = ShareInvitation.objects.get(invitation__email=south_referrer.email)
    withdraw = f"{page_url(study)}invitations/{by_page.public_id}/withdraw/"
    by_api = f"{api_url(study)}{created.json()['id']}/"

    assert client_for(outsider_b).post(withdraw.replace("/t/north/", "/t/south/")).status_code == 404
    assert client_for(outsider_b).post(withdraw).status_code == 404
    assert api_client_for(referrer_a, tenant_a).delete(by_api).status_code == 404  # cannot see the study
    assert clinician.post(withdraw).status_code == 302
    assert api_client_for(radiologist_a, tenant_a).delete(by_api).status_code == 204
    assert api_client_for(radiologist_a, tenant_a).delete(by_api).status_code == 404  # no longer pending

    browser = client_for(south_referrer)
    assert browser.get(link_for(south_referrer.email)).status_code == 400  # the link no longer works
    assert not_a_member(south_referrer, tenant_a)
    with tenant_scope(tenant_a):
        assert not StudyShare.objects.exists()
    withdrawn = events(tenant_a, EventType.INVITATION_REVOKED)
    assert [e.actor_user for e in withdrawn] == [radiologist_a, radiologist_a]
    assert "Waiting for acceptance" not in clinician.get(page_url(study)).content.decode()


@pytest.mark.parametrize(
    "data",
    [
        {"email": "a" * 300 + "@clinic.example", "first_name": "A", "last_name": "B", "days": 2},
        {"email": "a@clinic.example", "first_name": "A" * 500, "last_name": "B", "days": 2},
        {"email": "a@clinic.example", "first_name": " ", "last_name": " ", "days": 2},
        {"email": "a@clinic.example", "first_name": "A", "last_name": "B", "days": 0},
        {"email": "a@clinic.example", "first_name": "A", "last_name": "B", "days": "9" * 30},
        {"email": "a@clinic.example\x00", "first_name": "A", "last_name": "B", "days": 2},
        {"email": ["a@clinic.example"], "first_name": {"x": 1}, "last_name": "B", "days": 2},
    ],
)
def test_hostile_input_is_a_400_with_a_reason_and_changes_nothing(
    tenant_a, radiologist_a, client_for, api_client_for, data
):
    study = study_make(tenant_a)
    page = client_for(radiologist_a).post(
        page_url(study), {"action": "outside", **{k: str(v) for k, v in data.items()}}
    )
    api = api_client_for(radiologist_a, tenant_a).post(api_url(study), data, format="json")
    assert page.status_code == 400
    assert api.status_code == 400
    assert api.json()
    with tenant_scope(tenant_a):
        assert not Invitation.objects.exists()
