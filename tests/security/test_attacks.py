"""Attack tests of issue 14 that no other module holds (see docs/SECURITY_TESTS.md for those that do: login and MFA
lockout in tests/portal/accounts, token expiry and revocation in tests/tenants/apis/test_token_authentication.py,
TOTP reuse in test_mfa.py, API CSRF in tests/tenants/apis/test_routing.py, zip slip in tests/studies/services/
test_uploads.py): session fixation at the second factor, CSRF on pages, mass assignment on every writable API
operation of the schema, path traversal in upload file names."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings

from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.models import Membership, Tenant, User, UserSession
from tenants.scoping import tenant_scope
from tests.portal.accounts.flows import MFA, password_step
from tests.security.test_isolation_sweep import World, token_of, world  # noqa: F401  (world is a fixture)
from tests.security.test_schemathesis import _order, _path_values
from tests.tenants.factories import totp_device_for, totp_now

COOKIE = django_settings.SESSION_COOKIE_NAME


# --- session fixation ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_session_fixation_the_key_changes_again_at_the_second_factor(tenant_a, radiologist_a):
    """A key learned after the password step (or planted before it) is worth nothing once the code is given: the
    verified session has a new key, the half-signed-in one is gone, and the new one is registered for ending."""
    device = totp_device_for(radiologist_a)
    client = Client()
    password_step(client, "north-radiologist")
    half = client.cookies[COOKIE].value
    response = client.post(MFA, {"otp_token": totp_now(device)})
    assert response.status_code == 302
    verified = client.cookies[COOKIE].value

    assert verified != half
    assert not Session.objects.filter(session_key=half).exists()
    assert UserSession.objects.filter(session_key=verified, user=radiologist_a).exists()
    assert client.get("/t/north/").status_code == 200
    thief = Client()
    thief.cookies[COOKIE] = half
    assert thief.get("/t/north/").status_code == 302  # to the login page
    assert thief.get("/api/v1/t/north/tokens/").status_code in (401, 403)


# --- CSRF on pages ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_csrf_a_page_post_without_its_token_is_403(tenant_a, admin_a, client_for):
    """A signed-in, verified browser posting a page form without the CSRF token (a forged cross-site form) is
    refused, and nothing changes; the same post with the token goes through."""
    client = client_for(admin_a)
    client.handler.enforce_csrf_checks = True
    body = {"email": "csrf-victim@example.org", "role": "radiologist"}

    forged = client.post("/t/north/members/invite/", body)

    assert forged.status_code == 403
    with tenant_scope(tenant_a):
        from tenants.models import Invitation

        assert not Invitation.objects.filter(email="csrf-victim@example.org").exists()
    page = client.get("/t/north/members/").content.decode()  # the form posts to members/invite/
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None, "the form carries its CSRF token"
    honest = client.post("/t/north/members/invite/", {**body, "csrfmiddlewaretoken": token.group(1)})
    assert honest.status_code in (200, 302)


# --- mass assignment -------------------------------------------------------------------------------------------

# Fields a caller must never set through a body: whose tenant, whose object, which rights, which state.
PROTECTED = {
    "tenant": "south", "tenant_id": 1, "owner": "south-admin", "user": "south-admin", "user_id": 1,
    "actor": "south-admin", "created_by": "south-admin", "granted_by": "south-admin", "is_superuser": True,
    "is_staff": True, "permissions": ["tenants.manage_members"], "groups": ["south:tenant_admin"],
    "state": "approved", "status": "approved", "approved_by": "south-admin", "public_id": str(uuid.uuid4()),
    "id": str(uuid.uuid4()), "digest": "0" * 64, "sequence": 1, "hash": "0" * 64,
}  # fmt: skip


def _fingerprint(tenant_b: Tenant) -> dict[str, Any]:
    """What a mass assignment would change: rights of users, and anything in tenant B."""
    with tenant_scope(tenant_b):
        b_rows = {
            "memberships": Membership.objects.count(),
            "items": IngestItem.objects.count(),
        }
    return {
        "superusers": set(User.objects.filter(is_superuser=True).values_list("pk", flat=True)),
        "staff": set(User.objects.filter(is_staff=True).values_list("pk", flat=True)),
        **b_rows,
    }


def _assign(operation: Any, *, path_parameters: dict[str, str], headers: dict[str, str], app: Any) -> list[str]:
    """A few bodies generated from the operation's schema, each with the protected fields added."""
    problems: list[str] = []

    @given(case=operation.as_strategy(path_parameters=path_parameters, headers=headers))
    @settings(max_examples=3, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def call(case: Any) -> None:
        case.body = {**case.body, **PROTECTED} if isinstance(case.body, dict) else dict(PROTECTED)
        response = case.call(app=app)
        where = f"{operation.label} -> {response.status_code}"
        if response.status_code >= 500:
            problems.append(f"{where}: server error")
        if 200 <= response.status_code < 300 and response.content:
            body = response.json()
            for field in ("tenant", "owner", "is_superuser", "is_staff", "digest", "hash"):
                if isinstance(body, dict) and body.get(field) == PROTECTED[field]:
                    problems.append(f"{where}: {field} taken from the body")

    call()
    return problems


@pytest.mark.django_db(transaction=True)
def test_mass_assignment_every_writable_operation_ignores_or_refuses_protected_fields(
    world,  # noqa: F811
    tenant_a,
    tenant_b,
    admin_b,
    admin_a,
    radiologist_a,
):
    """Every POST, PUT and PATCH of the OpenAPI schema, with bodies generated from its schema plus the protected
    fields: no server error, no protected field echoed back with the value sent, and afterwards no user gained
    rights and tenant B is untouched."""
    app = WSGIHandler()
    admin = {"Authorization": f"Bearer {token_of(admin_a, tenant_a)}"}
    radiologist = {"Authorization": f"Bearer {token_of(radiologist_a, tenant_a)}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", app, headers=admin)
    values = _path_values(world)
    before = _fingerprint(tenant_b)
    problems: list[str] = []
    writable = 0

    for operation in sorted((r.ok() for r in schema.get_all_operations()), key=_order):
        if operation.method.lower() not in ("post", "put", "patch") or "/dicomweb/" in operation.path:
            continue
        writable += 1
        headers = radiologist if "/studies/" in operation.path or "/break-glass/" in operation.path else admin

        problems += _assign(operation, path_parameters=values[operation.path], headers=headers, app=app)

    assert writable > 10, "the schema lost its writable operations"
    assert _fingerprint(tenant_b) == before, "a body changed rights or reached tenant B"
    assert not problems, "\n".join(problems)


# --- path traversal in uploads ---------------------------------------------------------------------------------

ABSOLUTE = "/tmp/absolute-escape.dcm"  # noqa: S108 (the attack's target, never written by the test)
HOSTILE_NAMES = ["../../escaped.dcm", ABSOLUTE, "..\\..\\escaped-win.dcm", "nul\x00byte.dcm",
                 "../" * 20 + "etc/cron.d/enclave"]  # fmt: skip


def _store_files() -> set[Path]:
    found: set[Path] = set()
    for name in ("blobs", "replica", "quarantine"):
        root = Path(storages[name].location)
        if root.exists():
            found |= {p.resolve() for p in root.rglob("*") if p.is_file()}
    return found


@pytest.mark.django_db(transaction=True)
def test_path_traversal_in_upload_file_names_writes_nothing_outside_the_stores(tenant_a, technologist_a, client_for):
    """File names with parent references, absolute paths, backslashes and NUL: each upload is answered (stored or
    refused, never a 5xx), the name is kept only as a label, and every byte written lies in a store under a name
    the server chose."""
    client = client_for(technologist_a)
    roots = [Path(storages[name].location).resolve() for name in ("blobs", "replica", "quarantine")]
    before = _store_files()
    for n, name in enumerate(HOSTILE_NAMES):
        upload = SimpleUploadedFile(name, make_instance(sop_uid=f"1.2.826.0.1.3680043.10.777.{n + 1}"))
        response = client.post("/t/north/upload/files/", {"batch": str(uuid.uuid4()), "file": upload})
        assert response.status_code < 500, (name, response.status_code)
    written = _store_files() - before
    assert written, "nothing was stored at all"
    for path in written:
        assert any(root in path.parents for root in roots), path
        assert "escape" not in path.name, path
        assert "cron" not in str(path), path
    for escaped in ("escaped.dcm", "escaped-win.dcm"):
        for root in roots:
            assert not (root.parent.parent / escaped).exists()
    assert not Path(ABSOLUTE).exists()
    assert not Path("/etc/cron.d/enclave").exists()
    with tenant_scope(tenant_a):
        labels = list(IngestItem.objects.values_list("filename", flat=True))
    assert labels
    assert all("\x00" not in label for label in labels)
