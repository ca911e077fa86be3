"""Bearer tokens: accepted while usable, refused at once when expired or revoked, bound to one tenant."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiToken, Membership, Role
from tenants.scoping import tenant_scope
from tests.tenants.helpers import problem, token_for

URL = "/api/v1/t/north/tokens/"


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_a_token_authenticates_and_notes_its_use(tenant_a, radiologist_a):
    token, raw = token_for(radiologist_a, tenant_a)

    response = bearer(raw).get(URL)

    assert response.status_code == 200
    with tenant_scope(tenant_a):
        token.refresh_from_db()
    assert token.last_used_at is not None


def test_an_expired_token_is_401(tenant_a, radiologist_a):
    token, raw = token_for(radiologist_a, tenant_a)
    with tenant_scope(tenant_a):
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = bearer(raw).get(URL)

    assert response.status_code == 401
    assert problem(response)["detail"] == "The token is unknown, expired or revoked."
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_token_is_401_on_the_next_request(tenant_a, radiologist_a):
    token, raw = token_for(radiologist_a, tenant_a)
    client = bearer(raw)
    assert client.get(URL).status_code == 200
    with tenant_scope(tenant_a):
        services.api_token_revoke(actor=radiologist_a, token=token)

    assert client.get(URL).status_code == 401


def test_unknown_and_malformed_tokens_are_401(tenant_a, radiologist_a):
    assert bearer("enc_made-up").get(URL).status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer two words")
    assert client.get(URL).status_code == 401


def test_a_token_works_only_for_its_own_tenant(tenant_a, tenant_b, radiologist_a, make_member):
    with tenant_scope(tenant_b):
        membership = Membership(tenant=tenant_b, user=radiologist_a, role=Role.RADIOLOGIST)
        membership.full_clean()
        membership.save()
    _, north_raw = token_for(radiologist_a, tenant_a)

    south = bearer(north_raw).get("/api/v1/t/south/tokens/")
    nowhere = bearer(north_raw).get("/api/v1/t/nowhere/tokens/")

    assert south.status_code == nowhere.status_code == 404
    assert south.content == nowhere.content
    assert bearer(north_raw).get(URL).status_code == 200


def test_a_token_of_a_member_whose_membership_ended_is_401(tenant_a, admin_a, radiologist_a):
    _, raw = token_for(radiologist_a, tenant_a)
    with tenant_scope(tenant_a):
        membership = Membership.objects.get(user=radiologist_a)
        services.membership_end(actor=admin_a, membership=membership, reason="left")

    assert bearer(raw).get(URL).status_code == 401
