"""The OpenAPI schema documents the members and token operations, their bodies and their error responses."""

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
    operations = {
        op["operationId"]
        for item in (members, member, end, tokens, token)
        for method, op in item.items()
        if method in {"get", "post", "patch", "delete"}
    }
    assert operations == {
        "member_list", "member_add", "member_get", "member_update", "member_end",
        "api_token_list", "api_token_create", "api_token_revoke",
    }  # fmt: skip
    assert {"role", "status", "limit", "offset"} <= {p["name"] for p in members["get"]["parameters"]}
    for operation in (members["post"], member["patch"], end["post"]):
        for code in ("400", "403", "404"):
            assert PROBLEM in operation["responses"][code]["content"], (operation["operationId"], code)
    assert "requestBody" in members["post"]
    assert "201" in tokens["post"]["responses"]
    assert "204" in token["delete"]["responses"]
    components = doc["components"]["schemas"]
    assert "token" in components["ApiTokenCreated"]["properties"]
    for name in ("Member", "ApiToken"):
        properties = set(components[name]["properties"])
        assert not properties & {"password", "digest", "token"}, name


def test_schema_needs_credentials(db):
    assert APIClient().get("/api/schema/").status_code in {401, 403}
