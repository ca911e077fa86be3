from __future__ import annotations

import re
from datetime import timedelta

from django.core import mail
from django.utils import timezone

from audit.events import EventType
from tenants.models import Role, User
from tests.tenants.helpers import events, last_event, membership_of, registered_client, token_for

URL = "/t/north/members/"


def in_days(days: int) -> str:
    return (timezone.now().date() + timedelta(days=days)).isoformat()


def action_url(user, tenant, action):
    return f"{URL}{membership_of(user, tenant).public_id}/{action}/"


def test_admin_sees_members_and_the_forms(client_for, tenant_a, admin_a, radiologist_a, auditor_a):
    response = client_for(admin_a).get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    for username in ("north-admin", "north-radiologist", "north-auditor"):
        assert username in html
    assert radiologist_a.email in html
    assert 'id="add-member"' in html
    assert action_url(radiologist_a, tenant_a, "role") in html
    assert action_url(radiologist_a, tenant_a, "end") in html
    assert "account is deactivated" in html
    assert action_url(admin_a, tenant_a, "end") not in html  # no button to end your own membership
    assert "style=" not in html
    assert "<script>" not in html


def test_compliance_officer_and_auditor_see_it_read_only(client_for, tenant_a, compliance_a, auditor_a, radiologist_a):
    for user in (compliance_a, auditor_a):
        response = client_for(user).get(URL)
        html = response.content.decode()
        assert response.status_code == 200
        assert "north-radiologist" in html
        assert 'id="add-member"' not in html
        assert action_url(radiologist_a, tenant_a, "role") not in html


def test_radiologist_is_refused_and_audited(client_for, tenant_a, radiologist_a):
    response = client_for(radiologist_a).get(URL)

    assert response.status_code == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"where": "MembersView", "method": "GET"}


def test_another_tenant_is_a_404_like_no_tenant(client_for, tenant_a, tenant_b, admin_a, admin_b):
    client = client_for(admin_a)

    other = client.get("/t/south/members/")
    missing = client.get("/t/nowhere/members/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content


def test_invite_a_person(client_for, tenant_a, admin_a, django_capture_on_commit_callbacks):
    client = client_for(admin_a)
    form = {"email": "New@Example.org", "first_name": "Nell", "role": Role.TECHNOLOGIST}

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{URL}invite/", form)

    assert response.status_code == 302
    assert response["Location"] == URL
    page = client.get(URL).content.decode()
    assert "An invitation to new@example.org as technologist is queued for sending." in page
    assert "The person joins when they accept it" in page
    assert "new@example.org" in page.split("Invitations waiting for an answer")[1]  # listed as pending
    assert not User.objects.filter(email__iexact="new@example.org").exists()  # nobody joins without accepting
    assert [m.to for m in mail.outbox] == [["new@example.org"]]
    assert "/invitations/inv_" in mail.outbox[0].body
    event = last_event(tenant_a, EventType.INVITATION_SENT)
    assert event.actor_user == admin_a
    assert event.participants[1] == {"type": "email", "id": "new@example.org", "role": "invitee"}


def test_the_invitation_form_has_no_preselected_role(client_for, tenant_a, admin_a):
    html = client_for(admin_a).get(URL).content.decode()
    form = html.split('id="add-member"')[1].split("</form>")[0]
    select = form.split('name="role"')[1].split("</select>")[0]

    assert "required" in select.split(">")[0]
    selected = re.findall(r'<option value="([^"]*)"[^>]*selected', select)
    assert selected in ([], [""])  # only the "Choose a role…" placeholder, never a role

    refused = client_for(admin_a).post(f"{URL}invite/", {"email": "x@example.org"})
    assert refused.status_code == 400
    assert "This field is required." in refused.content.decode()


def test_invite_an_auditor_needs_an_end_date(client_for, tenant_a, admin_a):
    client = client_for(admin_a)
    form = {"email": "aud@example.org", "role": Role.AUDITOR}

    refused = client.post(f"{URL}invite/", form)
    accepted = client.post(f"{URL}invite/", {**form, "ends_at": in_days(30)})

    assert refused.status_code == 400
    assert "An auditor&#x27;s membership must have an end date." in refused.content.decode()
    assert 'value="aud@example.org"' in refused.content.decode()  # the form keeps what was typed
    assert accepted.status_code == 302
    (invitation,) = events(tenant_a, EventType.INVITATION_SENT)
    assert invitation.extra["ends_at"].startswith(in_days(30))


def test_change_role_set_end_date_and_clear_it(client_for, tenant_a, admin_a, radiologist_a):
    client = client_for(admin_a)

    role = client.post(action_url(radiologist_a, tenant_a, "role"), {"role": Role.TECHNOLOGIST})
    set_end = client.post(action_url(radiologist_a, tenant_a, "end-date"), {"ends_at": in_days(10)})
    cleared = client.post(action_url(radiologist_a, tenant_a, "end-date"), {"ends_at": ""})

    assert role.status_code == set_end.status_code == cleared.status_code == 302
    membership = membership_of(radiologist_a, tenant_a)
    assert membership.role == Role.TECHNOLOGIST
    assert membership.ends_at is None
    assert last_event(tenant_a, EventType.MEMBER_ROLE_CHANGED).actor_user == admin_a
    set_event, clear_event = events(tenant_a, EventType.MEMBER_END_DATE_SET)
    assert set_event.extra["ends_at"].startswith(in_days(10))
    assert clear_event.extra == {"ends_at": None}
    assert "no longer has an end date" in client.get(URL).content.decode()


def test_refused_changes_are_shown_beside_the_member(client_for, tenant_a, admin_a, auditor_a):
    client = client_for(admin_a)

    clear = client.post(action_url(auditor_a, tenant_a, "end-date"), {"ends_at": ""})
    past = client.post(action_url(auditor_a, tenant_a, "end-date"), {"ends_at": "2001-01-01"})
    own_role = client.post(action_url(admin_a, tenant_a, "role"), {"role": Role.RADIOLOGIST})
    own_end = client.post(action_url(admin_a, tenant_a, "end"), {"reason": "bored"})

    assert clear.status_code == past.status_code == own_role.status_code == own_end.status_code == 400
    assert "An auditor&#x27;s membership must have an end date." in clear.content.decode()
    assert "The end date must be in the future." in past.content.decode()
    assert "You cannot remove your own administrator role." in own_role.content.decode()
    assert "You cannot end your own membership." in own_end.content.decode()
    assert membership_of(admin_a, tenant_a).role == Role.TENANT_ADMIN
    assert membership_of(admin_a, tenant_a).status == "active"


def test_deactivate_ends_the_membership_sessions_and_tokens(client_for, tenant_a, admin_a, radiologist_a):
    victim = registered_client(client_for(radiologist_a), radiologist_a)
    assert victim.get("/t/north/tokens/").status_code == 200
    _, raw = token_for(radiologist_a, tenant_a)

    admin = client_for(admin_a)
    response = admin.post(action_url(radiologist_a, tenant_a, "end"), {"reason": "contract over"})

    assert response.status_code == 302
    after = victim.get("/t/north/tokens/")
    assert after.status_code == 302
    assert after["Location"].startswith("/accounts/login/")
    radiologist_a.refresh_from_db()
    assert radiologist_a.is_active is False
    api = victim.__class__()
    assert api.get("/api/v1/t/north/tokens/", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401
    event = last_event(tenant_a, EventType.MEMBERSHIP_ENDED)
    assert event.actor_user == admin_a
    assert event.extra["reason"] == "contract over"
    assert event.extra["deactivated"] is True
    assert (
        "The account belonged to no other organisation, so it is deactivated and signed out."
        in admin.get(URL).content.decode()
    )


def test_deactivate_needs_a_reason(client_for, tenant_a, admin_a, radiologist_a):
    response = client_for(admin_a).post(action_url(radiologist_a, tenant_a, "end"), {"reason": ""})

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert membership_of(radiologist_a, tenant_a).status == "active"


def test_members_without_manage_members_cannot_change_anything(
    client_for, tenant_a, compliance_a, radiologist_a, technologist_a
):
    for user in (compliance_a, radiologist_a):
        client = client_for(user)
        add = client.post(f"{URL}invite/", {"email": "x@example.org", "role": Role.RADIOLOGIST})
        role = client.post(action_url(technologist_a, tenant_a, "role"), {"role": Role.RADIOLOGIST})
        end = client.post(action_url(technologist_a, tenant_a, "end"), {"reason": "x"})
        assert add.status_code == role.status_code == end.status_code == 403
        assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == user
    assert membership_of(technologist_a, tenant_a).role == Role.TECHNOLOGIST
    assert membership_of(technologist_a, tenant_a).status == "active"
    assert events(tenant_a, EventType.INVITATION_SENT) == []


def test_another_tenants_member_is_a_404(client_for, tenant_a, tenant_b, admin_a, outsider_b):
    client = client_for(admin_a)
    south = membership_of(outsider_b, tenant_b).public_id

    other = client.post(f"{URL}{south}/end/", {"reason": "x"})
    missing = client.post(f"{URL}00000000-0000-4000-8000-000000000000/end/", {"reason": "x"})
    other_url = client.post(f"/t/south/members/{south}/end/", {"reason": "x"})

    assert other.status_code == missing.status_code == other_url.status_code == 404
    assert other.content == missing.content == other_url.content
    assert membership_of(outsider_b, tenant_b).status == "active"


def test_page_query_budget(client_for, tenant_a, admin_a, make_member, django_assert_max_num_queries):
    for n in range(30):
        make_member(tenant_a, Role.RADIOLOGIST, f"north-r{n:02d}")
    client = client_for(admin_a)

    with django_assert_max_num_queries(19):  # 14, + lockouts, + pending invitations, + the training banner
        response = client.get(URL)

    assert response.status_code == 200
