from __future__ import annotations

from audit.events import EventType
from tenants.models import Role
from tests.tenants.helpers import last_event, membership_of, problem, random_id, registered_client

URL = "/api/v1/t/north/members/"


def end_url(user, tenant):
    return f"{URL}{membership_of(user, tenant).public_id}/end/"


def test_ending_a_membership_ends_sessions_and_tokens_in_the_same_request(
    api_client_for, client_for, tenant_a, admin_a, radiologist_a
):
    browser = registered_client(client_for(radiologist_a), radiologist_a)
    assert browser.get("/t/north/tokens/").status_code == 200
    script = api_client_for(radiologist_a, tenant_a)
    assert script.get("/api/v1/t/north/tokens/").status_code == 200

    response = api_client_for(admin_a, tenant_a).post(
        end_url(radiologist_a, tenant_a), {"reason": "left"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["status"] == "ended"
    assert response.json()["is_current"] is False
    after_page = browser.get("/t/north/tokens/")
    assert after_page.status_code == 302
    assert after_page["Location"].startswith("/accounts/login/")
    assert script.get("/api/v1/t/north/tokens/").status_code == 401
    radiologist_a.refresh_from_db()
    assert radiologist_a.is_active is False
    event = last_event(tenant_a, EventType.MEMBERSHIP_ENDED)
    assert event.actor_user == admin_a
    assert event.target_id == str(membership_of(radiologist_a, tenant_a).public_id)
    assert event.extra == {
        "reason": "left",
        "tokens_revoked": 1,
        "sessions_ended": 1,
        "deactivated": True,
    }


def test_a_member_of_another_tenant_stays_active_there(api_client_for, tenant_a, tenant_b, admin_a, make_member):
    both = make_member(tenant_a, Role.RADIOLOGIST, "both-radiologist")
    make_member(tenant_b, Role.RADIOLOGIST, "both-radiologist-b")  # noise
    from tenants.access import membership_groups_sync
    from tenants.models import Membership
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant_b):
        m = Membership(tenant=tenant_b, user=both, role=Role.TECHNOLOGIST)
        m.full_clean()
        m.save()
        membership_groups_sync(membership=m)
    south_script = api_client_for(both, tenant_b)

    response = api_client_for(admin_a, tenant_a).post(end_url(both, tenant_a), {"reason": "moved"}, format="json")

    assert response.status_code == 200
    both.refresh_from_db()
    assert both.is_active is True
    assert south_script.get("/api/v1/t/south/tokens/").status_code == 200
    assert last_event(tenant_a, EventType.MEMBERSHIP_ENDED).extra["deactivated"] is False


def test_an_admin_cannot_end_their_own_membership(api_client_for, tenant_a, admin_a):
    response = api_client_for(admin_a, tenant_a).post(end_url(admin_a, tenant_a), {"reason": "bored"}, format="json")

    assert response.status_code == 400
    assert problem(response)["errors"] == {"membership": ["You cannot end your own membership."]}
    assert membership_of(admin_a, tenant_a).status == "active"


def test_a_reason_is_required(api_client_for, tenant_a, admin_a, radiologist_a):
    response = api_client_for(admin_a, tenant_a).post(end_url(radiologist_a, tenant_a), {}, format="json")

    assert response.status_code == 400
    assert "reason" in problem(response)["errors"]
    assert membership_of(radiologist_a, tenant_a).status == "active"


def test_ending_twice_is_harmless(api_client_for, tenant_a, admin_a, radiologist_a):
    client = api_client_for(admin_a, tenant_a)
    first = client.post(end_url(radiologist_a, tenant_a), {"reason": "left"}, format="json")
    second = client.post(end_url(radiologist_a, tenant_a), {"reason": "again"}, format="json")

    assert first.status_code == second.status_code == 200
    assert second.json()["ended_reason"] == "left"


def test_compliance_officer_is_refused(api_client_for, tenant_a, compliance_a, radiologist_a):
    response = api_client_for(compliance_a, tenant_a).post(
        end_url(radiologist_a, tenant_a), {"reason": "x"}, format="json"
    )

    assert response.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == compliance_a
    assert membership_of(radiologist_a, tenant_a).status == "active"


def test_another_tenants_member_is_a_404(api_client_for, tenant_a, tenant_b, admin_a, outsider_b):
    client = api_client_for(admin_a, tenant_a)

    other = client.post(end_url(outsider_b, tenant_b), {"reason": "x"}, format="json")
    missing = client.post(f"{URL}{random_id()}/end/", {"reason": "x"}, format="json")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert membership_of(outsider_b, tenant_b).status == "active"
