from __future__ import annotations

from datetime import date, timedelta

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


def test_add_a_member(client_for, tenant_a, admin_a, django_capture_on_commit_callbacks):
    client = client_for(admin_a)
    form = {"username": "north-new", "email": "new@example.org", "first_name": "Nell", "role": Role.TECHNOLOGIST}

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{URL}add/", form)

    assert response.status_code == 302
    assert response["Location"] == URL
    page = client.get(URL).content.decode()
    assert "north-new was added as technologist" in page
    user = User.objects.get(username="north-new")
    assert membership_of(user, tenant_a).role == Role.TECHNOLOGIST
    assert [m.to for m in mail.outbox] == [["new@example.org"]]
    event = last_event(tenant_a, EventType.MEMBER_ADDED)
    assert event.actor_user == admin_a
    assert event.target_id == str(membership_of(user, tenant_a).public_id)


def test_add_an_auditor_needs_an_end_date(client_for, tenant_a, admin_a):
    client = client_for(admin_a)
    form = {"username": "north-aud", "email": "aud@example.org", "role": Role.AUDITOR}

    refused = client.post(f"{URL}add/", form)
    accepted = client.post(f"{URL}add/", {**form, "ends_at": in_days(30)})

    assert refused.status_code == 400
    assert "An auditor&#x27;s membership must have an end date." in refused.content.decode()
    assert 'value="north-aud"' in refused.content.decode()  # the form keeps what was typed
    assert accepted.status_code == 302
    membership = membership_of(User.objects.get(username="north-aud"), tenant_a)
    assert membership.ends_at.date() == date.fromisoformat(in_days(30))


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
    assert "The account belonged to no other organisation, so it is deactivated." in admin.get(URL).content.decode()


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
        add = client.post(f"{URL}add/", {"username": "x", "email": "x@example.org", "role": Role.RADIOLOGIST})
        role = client.post(action_url(technologist_a, tenant_a, "role"), {"role": Role.RADIOLOGIST})
        end = client.post(action_url(technologist_a, tenant_a, "end"), {"reason": "x"})
        assert add.status_code == role.status_code == end.status_code == 403
        assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == user
    assert membership_of(technologist_a, tenant_a).role == Role.TECHNOLOGIST
    assert membership_of(technologist_a, tenant_a).status == "active"
    assert not User.objects.filter(username="x").exists()


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

    with django_assert_max_num_queries(15):  # 15: one more for the training banner every tenant page shows
        response = client.get(URL)

    assert response.status_code == 200
