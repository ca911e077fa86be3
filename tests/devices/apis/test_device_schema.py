"""The OpenAPI schema documents the device operations, their bodies and their problem+json error responses."""

from __future__ import annotations

from tests.tenants.apis.test_schema import PROBLEM, schema


def test_schema_documents_the_device_operations(api_client_for, tenant_a, admin_a):
    paths = schema(api_client_for(admin_a, tenant_a))["paths"]

    devices = paths["/api/v1/t/{tenant}/devices/"]
    device = paths["/api/v1/t/{tenant}/devices/{public_id}/"]
    approve = paths["/api/v1/t/{tenant}/devices/{public_id}/approve/"]
    revoke = paths["/api/v1/t/{tenant}/devices/{public_id}/revoke/"]
    operations = {
        op["operationId"]
        for item in (devices, device, approve, revoke)
        for method, op in item.items()
        if method in {"get", "post"}
    }
    assert operations == {"device_list", "device_register", "device_get", "device_approve", "device_revoke"}
    assert {"status", "kind", "limit", "offset"} <= {p["name"] for p in devices["get"]["parameters"]}
    for operation in (devices["post"], approve["post"], revoke["post"]):
        for code in ("400", "403", "404"):
            assert PROBLEM in operation["responses"][code]["content"], (operation["operationId"], code)
    assert "201" in devices["post"]["responses"]
    assert "requestBody" in devices["post"]
    assert "requestBody" in revoke["post"]
