from __future__ import annotations

import re

from rest_framework.test import APIClient

from audit.events import EventType
from tenants.models import ApiToken
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, last_event, token_for

URL = "/t/north/tokens/"
NEW_TOKEN = re.compile(r'<p class="secret" id="new-token">([^<]+)</p>')


def test_lists_my_tokens_only(client_for, tenant_a, radiologist_a, technologist_a):
    mine, _ = token_for(radiologist_a, tenant_a, name="my script")
    token_for(technologist_a, tenant_a, name="their script")

    response = client_for(radiologist_a).get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert "my script" in html
    assert mine.prefix in html
    assert "their script" not in html
    assert mine.digest not in html
    assert 'id="new-token"' not in html
    assert "style=" not in html


def test_create_shows_the_token_once_and_it_works(client_for, tenant_a, technologist_a):
    client = client_for(technologist_a)

    response = client.post(URL, {"name": "modality bridge", "days": 30})

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = NEW_TOKEN.search(response.content.decode()).group(1)
    with tenant_scope(tenant_a):
        token = ApiToken.objects.get(digest=ApiToken.digest_of(raw))
    assert token.user == technologist_a
    assert raw not in client.get(URL).content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/t/north/tokens/").status_code == 200
    event = last_event(tenant_a, EventType.API_TOKEN_CREATED)
    assert event.actor_user == technologist_a
    assert event.target_id == str(token.public_id)


def test_create_refuses_bad_input(client_for, tenant_a, technologist_a, settings):
    settings.API_TOKEN_MAX_DAYS = 30
    client = client_for(technologist_a)

    too_long = client.post(URL, {"name": "x", "days": 31})
    no_name = client.post(URL, {"name": "", "days": 5})

    assert too_long.status_code == no_name.status_code == 400
    assert "Ensure this value is less than or equal to 30." in too_long.content.decode()
    assert "This field is required." in no_name.content.decode()
    assert 'id="new-token"' not in too_long.content.decode()
    assert events(tenant_a, EventType.API_TOKEN_CREATED) == []


def test_revoke(client_for, tenant_a, technologist_a):
    token, raw = token_for(technologist_a, tenant_a)
    client = client_for(technologist_a)

    response = client.post(f"{URL}{token.public_id}/revoke/")

    assert response.status_code == 302
    assert "is revoked" in client.get(URL).content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/t/north/tokens/").status_code == 401
    event = last_event(tenant_a, EventType.API_TOKEN_REVOKED)
    assert event.actor_user == technologist_a
    assert event.target_id == str(token.public_id)


def test_someone_elses_or_another_tenants_token_is_a_404(
    client_for, tenant_a, tenant_b, technologist_a, radiologist_a, admin_b
):
    colleague, _ = token_for(radiologist_a, tenant_a)
    south, _ = token_for(admin_b, tenant_b)
    client = client_for(technologist_a)

    responses = [
        client.post(f"{URL}{colleague.public_id}/revoke/"),
        client.post(f"{URL}{south.public_id}/revoke/"),
        client.post(f"{URL}00000000-0000-4000-8000-000000000000/revoke/"),
    ]

    assert {r.status_code for r in responses} == {404}
    assert len({r.content for r in responses}) == 1
    assert events(tenant_a, EventType.API_TOKEN_REVOKED) == []


def test_non_member_gets_a_404(client_for, tenant_a, outsider_b):
    other = client_for(outsider_b).get(URL)
    missing = client_for(outsider_b).get("/t/nowhere/tokens/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content


def test_signed_out_visitors_are_sent_to_sign_in(client, tenant_a):
    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_page_query_budget(client_for, tenant_a, radiologist_a, django_assert_max_num_queries):
    for n in range(20):
        token_for(radiologist_a, tenant_a, name=f"t{n}")
    client = client_for(radiologist_a)

    with django_assert_max_num_queries(12):  # 12: one more for the training banner every tenant page shows
        client.get(URL)
