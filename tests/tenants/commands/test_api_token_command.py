from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from audit.events import EventType
from tenants import services
from tenants.models import ApiToken
from tenants.scoping import tenant_scope
from tests.tenants.helpers import last_event, membership_of, token_for


def run(*args: str) -> str:
    out = StringIO()
    call_command("api_token", *args, stdout=out)
    return out.getvalue()


def test_create_prints_only_the_token_and_it_authenticates(tenant_a, radiologist_a):
    output = run("create", "--user", "North-Radiologist", "--tenant", "north", "--days", "5", "--name", "backup")

    raw = output.strip()
    assert output == raw + "\n"
    assert len(raw.split()) == 1
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.get("/api/v1/t/north/tokens/")
    assert response.status_code == 200
    assert [row["name"] for row in response.json()["results"]] == ["backup"]
    event = last_event(tenant_a, EventType.API_TOKEN_CREATED)
    assert event.actor_user == radiologist_a
    assert event.system_principal == "manage.py api_token"
    assert event.extra["days"] == 5


def test_create_refuses_a_non_member(tenant_a, tenant_b, admin_a, outsider_b, platform_staff):
    for username in ("south-radiologist", "ops-staff", "nobody"):
        with pytest.raises(CommandError, match="is not a current member of 'north'"):
            run("create", "--user", username, "--tenant", "north")
    with pytest.raises(CommandError, match="no tenant 'west'"):
        run("create", "--user", "north-admin", "--tenant", "west")


def test_create_refuses_a_former_member(tenant_a, admin_a, radiologist_a):
    with tenant_scope(tenant_a):
        services.membership_end(actor=admin_a, membership=membership_of(radiologist_a, tenant_a), reason="left")

    with pytest.raises(CommandError, match="not a current member"):
        run("create", "--user", "north-radiologist", "--tenant", "north")


def test_create_refuses_bad_days_clearly(tenant_a, radiologist_a):
    with pytest.raises(CommandError, match="A token lives from 1 to"):
        run("create", "--user", "north-radiologist", "--tenant", "north", "--days", "0")


def test_list_and_revoke(tenant_a, radiologist_a):
    token, raw = token_for(radiologist_a, tenant_a, name="nightly")

    listing = run("list", "--user", "north-radiologist", "--tenant", "north")
    revoked = run("revoke", "--id", str(token.public_id), "--tenant", "north")
    again = run("revoke", "--id", str(token.public_id), "--tenant", "north")

    assert str(token.public_id) in listing
    assert "nightly" in listing
    assert "active" in listing
    assert raw not in listing
    assert token.digest not in listing
    assert "is revoked" in revoked
    assert "already revoked" in again
    with tenant_scope(tenant_a):
        assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    event = last_event(tenant_a, EventType.API_TOKEN_REVOKED)
    assert event.system_principal == "manage.py api_token"
    assert event.target_id == str(token.public_id)


def test_revoke_only_finds_tokens_of_the_named_tenant(tenant_a, tenant_b, admin_b):
    south, _ = token_for(admin_b, tenant_b)

    with pytest.raises(CommandError, match="This tenant has no token"):
        run("revoke", "--id", str(south.public_id), "--tenant", "north")
    with tenant_scope(tenant_b):
        assert ApiToken.objects.get(pk=south.pk).revoked_at is None
