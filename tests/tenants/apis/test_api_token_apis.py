from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_otp import DEVICE_ID_SESSION_KEY
from rest_framework.test import APIClient

from audit.events import EventType
from tenants.models import ApiToken
from tenants.scoping import tenant_scope
from tests.tenants.factories import totp_device_for
from tests.tenants.helpers import events, last_event, problem, random_id, token_for

URL = "/api/v1/t/north/tokens/"


def session_api(user) -> APIClient:
    """A browser session signed in with both factors: where tokens are made."""
    client = APIClient()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = totp_device_for(user).persistent_id
    session.save()
    return client


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_list_shows_only_my_tokens_and_no_secrets(api_client_for, tenant_a, radiologist_a, technologist_a):
    mine, _ = token_for(radiologist_a, tenant_a, name="nightly export")
    token_for(technologist_a, tenant_a, name="not yours")
    client = api_client_for(radiologist_a, tenant_a)

    response = client.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert {row["name"] for row in body["results"]} == {"nightly export", "test"}
    row = next(r for r in body["results"] if r["name"] == "nightly export")
    assert row["id"] == str(mine.public_id)
    assert row["prefix"] == mine.prefix
    assert row["status"] == "active"
    assert "token" not in row
    assert mine.digest not in response.content.decode()
    assert "digest" not in response.content.decode()


def test_create_returns_the_token_once_and_it_works(api_client_for, tenant_a, radiologist_a):
    response = session_api(radiologist_a).post(URL, {"name": "PACS bridge", "days": 7}, format="json")

    assert response.status_code == 201
    body = response.json()
    raw = body["token"]
    assert raw.startswith(body["prefix"])
    assert parse_datetime(body["expires_at"]) - timezone.now() > timedelta(days=6, hours=23)
    with tenant_scope(tenant_a):
        stored = ApiToken.objects.get(public_id=body["id"])
    assert stored.digest == ApiToken.digest_of(raw)
    assert raw not in str(stored.__dict__)
    listed = bearer(raw).get(URL)
    assert listed.status_code == 200
    assert "token" not in next(r for r in listed.json()["results"] if r["id"] == body["id"])
    event = last_event(tenant_a, EventType.API_TOKEN_CREATED)
    assert event.actor_user == radiologist_a
    assert event.target_id == body["id"]
    assert event.extra["days"] == 7
    assert raw not in str(event.extra)
    assert raw not in str(event.participants)


def test_create_uses_the_default_lifetime(api_client_for, tenant_a, radiologist_a):
    response = session_api(radiologist_a).post(URL, {"name": "default"}, format="json")

    expires = parse_datetime(response.json()["expires_at"])
    assert abs(expires - (timezone.now() + timedelta(days=settings.API_TOKEN_DEFAULT_DAYS))) < timedelta(minutes=1)


def test_a_token_cannot_make_tokens(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)

    response = client.post(URL, {"name": "renewal", "days": 365}, format="json")

    assert response.status_code == 403
    assert "browser session" in response.json()["detail"]
    with tenant_scope(tenant_a):
        assert not ApiToken.objects.filter(name="renewal").exists()
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a


def test_create_refuses_bad_input(tenant_a, radiologist_a, settings):
    client = session_api(radiologist_a)
    settings.API_TOKEN_MAX_DAYS = 30

    too_long = client.post(URL, {"name": "x", "days": 31}, format="json")
    zero = client.post(URL, {"name": "x", "days": 0}, format="json")
    blank = client.post(URL, {"name": "  "}, format="json")

    assert too_long.status_code == zero.status_code == blank.status_code == 400
    assert problem(too_long)["errors"] == {"days": ["A token lives from 1 to 30 days."]}
    assert "days" in problem(zero)["errors"]
    assert "name" in problem(blank)["errors"]
    assert events(tenant_a, EventType.API_TOKEN_CREATED) == []  # none was made


def test_revoke_my_token(api_client_for, tenant_a, radiologist_a):
    token, raw = token_for(radiologist_a, tenant_a)
    client = api_client_for(radiologist_a, tenant_a)

    first = client.delete(f"{URL}{token.public_id}/")
    again = client.delete(f"{URL}{token.public_id}/")

    assert first.status_code == again.status_code == 204
    assert bearer(raw).get(URL).status_code == 401
    revoked = events(tenant_a, EventType.API_TOKEN_REVOKED)
    assert len(revoked) == 1
    assert revoked[0].actor_user == radiologist_a
    assert revoked[0].target_id == str(token.public_id)


def test_someone_elses_token_is_invisible_to_a_member(api_client_for, tenant_a, radiologist_a, technologist_a):
    theirs, raw = token_for(technologist_a, tenant_a)
    client = api_client_for(radiologist_a, tenant_a)

    other = client.delete(f"{URL}{theirs.public_id}/")
    missing = client.delete(f"{URL}{random_id()}/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert bearer(raw).get(URL).status_code == 200


def test_a_tenant_admin_may_revoke_a_members_token(api_client_for, tenant_a, admin_a, technologist_a):
    theirs, raw = token_for(technologist_a, tenant_a)

    response = api_client_for(admin_a, tenant_a).delete(f"{URL}{theirs.public_id}/")

    assert response.status_code == 204
    assert bearer(raw).get(URL).status_code == 401
    assert last_event(tenant_a, EventType.API_TOKEN_REVOKED).actor_user == admin_a


def test_another_tenants_token_is_a_404(api_client_for, tenant_a, tenant_b, admin_a, admin_b):
    south_token, south_raw = token_for(admin_b, tenant_b)
    client = api_client_for(admin_a, tenant_a)

    other = client.delete(f"{URL}{south_token.public_id}/")
    missing = client.delete(f"{URL}{random_id()}/")
    other_url = client.get("/api/v1/t/south/tokens/")

    assert other.status_code == missing.status_code == other_url.status_code == 404
    assert other.content == missing.content == other_url.content
    assert bearer(south_raw).get("/api/v1/t/south/tokens/").status_code == 200


def test_list_query_budget(api_client_for, tenant_a, radiologist_a, django_assert_max_num_queries):
    for n in range(20):
        token_for(radiologist_a, tenant_a, name=f"t{n}")
    client = api_client_for(radiologist_a, tenant_a)

    with django_assert_max_num_queries(6):
        response = client.get(URL)

    assert response.json()["count"] == 21
