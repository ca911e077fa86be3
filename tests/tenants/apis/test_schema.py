"""The OpenAPI schema documents the members, invitation and token operations, their bodies and their error responses."""

from __future__ import annotations

import json

import yaml
from rest_framework.test import APIClient

PROBLEM = "application/problem+json"


def schema(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    content = response.content.decode()
    return json.loads(content) if content.lstrip().startswith("{") else yaml.safe_load(content)


def test_schema_documents_members_and_tokens(api_client_for, tenant_a, radiologist_a):
    doc = schema(api_client_for(radiologist_a, tenant_a))
    paths = doc["paths"]

    members = paths["/api/v1/t/{tenant}/members/"]
    member = paths["/api/v1/t/{tenant}/members/{public_id}/"]
    end = paths["/api/v1/t/{tenant}/members/{public_id}/end/"]
    tokens = paths["/api/v1/t/{tenant}/tokens/"]
    token = paths["/api/v1/t/{tenant}/tokens/{public_id}/"]
    invitations = paths["/api/v1/t/{tenant}/invitations/"]
    invitation = paths["/api/v1/t/{tenant}/invitations/{public_id}/"]
    operations = {
        op["operationId"]
        for item in (members, member, end, tokens, token, invitations, invitation)
        for method, op in item.items()
        if method in {"get", "post", "patch", "delete"}
    }
    assert operations == {
        "member_list", "member_get", "member_update", "member_end",
        "invitation_list", "invitation_create", "invitation_get", "invitation_revoke",
        "api_token_list", "api_token_create", "api_token_revoke",
    }  # fmt: skip
    assert {"role", "status", "limit", "offset"} <= {p["name"] for p in members["get"]["parameters"]}
    assert "post" not in members  # people join by invitation only
    for operation in (invitations["post"], member["patch"], end["post"]):
        for code in ("400", "403", "404"):
            assert PROBLEM in operation["responses"][code]["content"], (operation["operationId"], code)
    assert "requestBody" in invitations["post"]
    assert "201" in invitations["post"]["responses"]
    assert "204" in invitation["delete"]["responses"]
    assert "201" in tokens["post"]["responses"]
    assert "204" in token["delete"]["responses"]
    components = doc["components"]["schemas"]
    assert "token" in components["ApiTokenCreated"]["properties"]
    assert "username" not in components["InvitationCreateRequest"]["properties"]
    for name in ("Member", "ApiToken", "Invitation"):
        properties = set(components[name]["properties"])
        assert not properties & {"password", "digest", "token"}, name


def test_schema_needs_credentials(db):
    assert APIClient().get("/api/schema/").status_code in {401, 403}
