"""Shared fixtures: two tenants, personas in each, and clients signed in the way each door expects.

Personas follow the style guide: `radiologist_a` and `technologist_a` (tenant A), `outsider_b` (tenant B only),
`platform_staff` (operators, no membership), plus an admin, a compliance officer and an auditor of tenant A.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery._state import _set_task_join_will_block
from django.test import Client
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from rest_framework.test import APIClient

from tenants import services
from tenants.models import Membership, Role, Tenant, User
from tenants.scoping import tenant_scope
from tests.log_guard import LogGuard
from tests.tenants.factories import UserFactory, totp_device_for
from tests.tlsca import TestCA

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


# The application's role of settings.DATABASES["default"], kept while the owner makes the test database.
_APP_ROLE: dict[str, Any] = {}


def _app_role_ensure() -> None:
    """The application's role of settings.DATABASES (which owns nothing), made once on this server by
    DATABASE_ADMIN_URL or the superuser when missing. Fails the run with the reason when it cannot be made: the
    suite never quietly runs as the owner of the tables."""
    import psycopg
    from django.conf import settings

    from tenants.db import rowsecurity
    from tests.databases import admin_connect_kwargs

    role, password = settings.DATABASES["default"]["USER"], settings.DATABASES["default"].get("PASSWORD") or None
    if not role or role == settings.DATABASE_OWNER.get("USER"):
        pytest.exit("The tests run as the application's database role, which must differ from DATABASE_URL's owner.")
    try:
        with psycopg.connect(**admin_connect_kwargs(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
                try:
                    conn.execute(rowsecurity.app_role_create_sql(role, password))
                except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                    pass  # another test process made it meanwhile
    except psycopg.Error as exc:
        pytest.exit(
            f"Cannot make the application's database role {role!r} ({exc.__class__.__name__}: {exc}). Make it once "
            f"as a superuser (README, 'Database roles'), or set DATABASE_ADMIN_URL to a role with CREATEROLE.",
            returncode=3,
        )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """The test database is made and migrated by the owner of the tables (DATABASE_URL): see django_db_setup."""
    from django.conf import settings
    from django.db import connection

    _APP_ROLE.update(USER=connection.settings_dict["USER"], PASSWORD=connection.settings_dict.get("PASSWORD"))
    _app_role_ensure()
    connection.close()
    connection.settings_dict.update(
        USER=settings.DATABASE_OWNER.get("USER"), PASSWORD=settings.DATABASE_OWNER.get("PASSWORD")
    )


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """After pytest-django made the test database as the owner, the whole suite connects as the application's role,
    under row-level security (issue 14), as the processes it starts do (DATABASE_APP_USER below)."""
    from django.db import connection

    from tenants.db.roles import app_role_grant

    app = dict(_APP_ROLE)
    with django_db_blocker.unblock():
        app_role_grant(connection, app["USER"])  # a reused database was migrated before: grant again
    connection.close()
    connection.settings_dict.update(app)
    os.environ.pop("DATABASE_APP_URL", None)
    os.environ["DATABASE_APP_USER"] = str(app["USER"])
    os.environ["DATABASE_APP_PASSWORD"] = str(app["PASSWORD"] or "")


@pytest.fixture
def tenant_a(db: Any) -> Tenant:
    return services.tenant_create(slug="north", name="North Hospital Group")


@pytest.fixture
def tenant_b(db: Any) -> Tenant:
    return services.tenant_create(slug="south", name="South Hospital Group")


def _member(tenant: Tenant, role: str, username: str, *, ends_in_days: int | None = None) -> User:
    """A user with a current membership, made through the real services by a bootstrap admin."""
    user = UserFactory(username=username)
    ends_at = timezone.now() + timedelta(days=ends_in_days) if ends_in_days else None
    with tenant_scope(tenant):
        membership = Membership(tenant=tenant, user=user, role=role, ends_at=ends_at)
        membership.full_clean()
        membership.save()
        from tenants.access import membership_groups_sync

        membership_groups_sync(membership=membership)
    return user


@pytest.fixture
def make_member(db: Any) -> Callable[..., User]:
    return _member


@pytest.fixture
def admin_a(tenant_a: Tenant) -> User:
    return _member(tenant_a, Role.TENANT_ADMIN, "north-admin")


@pytest.fixture
def compliance_a(tenant_a: Tenant) -> User:
    return _member(tenant_a, Role.COMPLIANCE_OFFICER, "north-compliance")


@pytest.fixture
def auditor_a(tenant_a: Tenant) -> User:
    return _member(tenant_a, Role.AUDITOR, "north-auditor", ends_in_days=30)


@pytest.fixture
def radiologist_a(tenant_a: Tenant) -> User:
    return _member(tenant_a, Role.RADIOLOGIST, "north-radiologist")


@pytest.fixture
def technologist_a(tenant_a: Tenant) -> User:
    return _member(tenant_a, Role.TECHNOLOGIST, "north-technologist")


@pytest.fixture
def admin_b(tenant_b: Tenant) -> User:
    return _member(tenant_b, Role.TENANT_ADMIN, "south-admin")


@pytest.fixture
def outsider_b(tenant_b: Tenant) -> User:
    return _member(tenant_b, Role.RADIOLOGIST, "south-radiologist")


@pytest.fixture
def platform_staff(db: Any) -> User:
    return UserFactory(username="ops-staff", is_staff=True, is_superuser=True)


def verified_client(user: User) -> Client:
    """A browser session signed in with password and TOTP, as the login pages leave it."""
    client = Client()
    client.force_login(user)
    device = totp_device_for(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


@pytest.fixture
def client_for() -> Callable[[User], Client]:
    return verified_client


@pytest.fixture
def api_client_for(db: Any) -> Callable[[User, Tenant], APIClient]:
    """An API client with a fresh bearer token of `user` in `tenant`, made by the real service."""

    def make(user: User, tenant: Tenant) -> APIClient:
        with tenant_scope(tenant):
            _, raw = services.api_token_create(actor=user, tenant=tenant, name="test")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture(scope="session", autouse=True)
def _celery_tasks_registered() -> None:
    """Every app's Celery tasks registered once, as a worker does when it starts. Otherwise the first task queued
    in a test process does it, and Celery's Django fix-up then runs django.setup() again, which reconfigures
    logging in the middle of that test (and drops the log guard's handler)."""
    from portal.celery import app

    app.loader.import_default_modules()


@pytest.fixture(autouse=True)
def _away_from_the_turn_of_a_month(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Near the turn of a month a read's audit event takes two statements more on purpose (audit.services
    MONTH_EDGE); tests that count a request's statements must not depend on the day the suite runs. The tests of
    that choice (their names say month) keep the real check."""
    if "month" not in request.node.name:
        from audit import services as audit_services

        monkeypatch.setattr(audit_services, "_near_month_edge", lambda at: False)


@pytest.fixture(autouse=True)
def _celery_join_flag_reset() -> None:
    """Celery's eager `apply_async` marks "inside a task" in a process-wide flag (celery._state) and restores the
    value it saw on the way in; two threads running eager tasks at once (the concurrency tests) can restore each
    other's value and leave the flag set, and a later test of the same process that waits on a real worker's result
    then fails with "Never call result.get() within a task!". The test process is never inside a task: each test
    starts with the flag cleared."""
    _set_task_join_will_block(False)


@pytest.fixture(autouse=True)
def _no_secrets_in_logs() -> Iterator[None]:
    """Each test's log records, formatted as production writes them, hold no token and no default synthetic
    patient (tests/log_guard.py); a leak fails the test's teardown."""
    guard = LogGuard().install()
    try:
        yield
    finally:
        guard.remove()
    leaks = guard.leaks()
    if leaks:
        pytest.fail("Patient data or a token in the log output:\n" + "\n".join(leaks[:5]), pytrace=False)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A certificate authority the TLS tests make for themselves (tests/tlsca.py)."""
    return TestCA(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, one per test process (two sync Playwrights cannot share a process).

    Playwright's sync API keeps an event loop running in the test thread from here on, so Django's guard against
    ORM calls from async code must be off for the rest of this process (shared/DEPENDENCIES.md §6.5): the calls the
    tests make are synchronous and safe. Subprocesses the tests start get an environment without the flag."""
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/system-deps.sh does).")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )  # fmt: skip
        yield browser
        browser.close()
