"""The rules of shared/STYLE.md that import-linter cannot say (the layers themselves are its contracts in
pyproject.toml, run by `make lint`): the tenant-scoped manager, the base class of every routed API and page, the
escape hatches' allow-lists, the one module that imports guardian, and the shape of tasks."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from django.apps import apps
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.views import APIView

from portal.web.api import TenantApi
from portal.web.pages import TenantPageView
from studies.dicomweb.base import DicomWebApi
from tenants.scoping import TenantScopedManager

ROOT = Path(__file__).resolve().parents[1]
# Our apps: those of INSTALLED_APPS that live in this repository, whatever they are.
OUR_APPS = tuple(config.label for config in apps.get_app_configs() if Path(config.path).resolve().is_relative_to(ROOT))
# Python outside the apps that still talks to the database.
OTHER_SOURCES = ("bench",)

# Files where `unscoped_objects` may appear, each with its reason.
UNSCOPED_ALLOWED = {
    "tenants/models.py": "defines the bypass",
    "tenants/scoping.py": "documents the bypass",
    "audit/models.py": "defines the bypass on AuditEvent",
    "tenants/access.py": "membership, read before a scope exists: a person's current memberships across tenants",
    "tenants/selectors.py": "reads that open a scope: a bearer token by digest; a user's memberships for platform work",
    "tenants/tasks.py": "fan-out: which tenants have expired memberships",
    "studies/tasks.py": "fan-out: which tenants have stuck ingest items",
    "audit/selectors.py": "the chain verifier walks every tenant's chain",
    "audit/services.py": "syslog forwarding sends every chain's events in order to the hospital's audit repository",
    "audit/admin.py": "operators' read-only view of events across tenants (no patient fields)",
    "tenants/admin.py": "operators' view of memberships across tenants",
    "devices/admin.py": "operators' read-only view of devices across tenants (no patient data)",
    "studies/admin.py": "operators' view of tenant offboardings across tenants (no patient data)",
    "devices/services/tokens.py": "reads that open a scope: a device token or enrolment code by digest",
    "devices/tasks.py": "fan-out: which tenants have open wipe orders",
    "portal/web/health.py": "the platform's own clock alerts (no tenant), to raise one per interval",
    "bench/query.py": "the benchmark counts the audit events its reads wrote (its own database)",
}
DANGEROUS_ALLOWED: dict[str, str] = {}
GUARDIAN_ALLOWED = {
    "tenants/access.py",
    "studies/models.py",  # guardian's direct-foreign-key permission models for studies, defined, never queried
}
# Routed DRF views that are not tenant APIs, with the reason they need no tenant.
PUBLIC_APIS = {
    "SpectacularAPIView": "OpenAPI schema: requires authentication, holds no tenant data",
    "SpectacularSwaggerSplitView": "the schema's browser, its start script apart (the CSP allows no inline script)",
}
FANOUT_TASKS = {
    "tenants.tasks.memberships_end_due",
    "studies.tasks.ingest_sweep",
    "studies.tasks.break_glass_expire",
    "studies.tasks.shares_cleanup",
    "studies.tasks.read_tallies_flush",
    "training.tasks.training_reminders",
    "audit.tasks.security_rules_evaluate_all",
    "audit.tasks.incident_reminders_all",
    "audit.tasks.audit_verify_all",
    "devices.tasks.wipe_orders_overdue",
    "studies.tasks.retention_proposals_make",
    "studies.tasks.blob_fixity_check_all",
    "studies.tasks.blob_replicas_catch_up_all",
    "studies.tasks.blob_orphans_remove_all",
    "tenants.tasks.recertification_all",
}
# Tasks that hold no tenant's data, each with its reason.
PLATFORM_TASKS = {
    "tenants.tasks.mail_send": "delivers one e-mail of the outbox (subject, body, addresses); reads no tenant row",
    "tenants.tasks.mail_outbox_sweep": "queues again the outbox's undelivered e-mails; reads no tenant row",
    "audit.tasks.audit_digests_sign": "signs the chain heads of every tenant (platform work, no tenant row read)",
    "audit.tasks.audit_syslog_forward": "forwards every chain's events in order (platform work)",
    "audit.tasks.audit_worm_anchor": "writes the signed digests and closed months of every chain to the WORM "
    "store (platform work, like the digests and the syslog forwarding)",
    "audit.tasks.audit_partitions_ensure": "makes the audit events' table's monthly partitions (DDL, no row read)",
    "audit.tasks.audit_changes_seal_all": "seals django-auditlog's entries of every tenant; LogEntry and the seals "
    "are not tenant-scoped models",
    "studies.tasks.database_backup": "pg_dump of the whole database (every tenant) to the replica store; reads no "
    "tenant row through the ORM",
    "studies.tasks.restore_drill": "restores the latest backup into a scratch database and checks every tenant in "
    "it, each inside its own scope",
}
# Models with a tenant column that are not tenant data, each with its reason.
UNSCOPED_MODELS = {
    "audit.AuditChain": "the lock row of a hash chain, also of the platform chain (no tenant); only audit.services "
    "and audit.selectors touch it, by key",
}
QUEUEING = {"task_queue", "task_queue_on_commit"}  # tenants.jobs: services name the task they queue


def _source_files() -> list[Path]:
    files = []
    for top in (*OUR_APPS, *OTHER_SOURCES):
        base = ROOT / top
        if base.exists():
            files += [p for p in base.rglob("*.py") if "migrations" not in p.parts]
    return files


def _routes(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def _view_class(pattern: URLPattern):
    callback = pattern.callback
    return getattr(callback, "view_class", None) or getattr(callback, "cls", None)


def test_our_apps_are_discovered():
    assert {"portal", "tenants", "audit", "devices", "studies"} <= set(OUR_APPS)


def test_every_tenant_model_uses_the_scoped_manager():
    checked = set()
    for model in apps.get_models():
        if model._meta.app_label not in OUR_APPS or model._meta.label in UNSCOPED_MODELS:
            continue
        if any(f.name == "tenant" for f in model._meta.get_fields()):
            assert isinstance(model._default_manager, TenantScopedManager), model
            assert isinstance(model.objects, TenantScopedManager), model
            checked.add(model._meta.label)
    assert {"tenants.Membership", "studies.Study", "audit.AuditEvent"} <= checked


def test_every_routed_api_is_a_tenant_api_or_public():
    public_seen = set()
    for route, pattern in _routes(get_resolver().url_patterns):
        view = _view_class(pattern)
        if view is None or not issubclass(view, APIView):
            continue
        if issubclass(view, TenantApi):
            continue
        assert view.__name__ in PUBLIC_APIS, f"{route}: {view.__name__} is neither a TenantApi nor in PUBLIC_APIS"
        public_seen.add(view.__name__)
    assert public_seen == set(PUBLIC_APIS), "PUBLIC_APIS names a view that is no longer routed"


@pytest.mark.parametrize(
    ("prefix", "base"),
    [
        ("api/v1/t/<slug:tenant>/", TenantApi),
        ("dicomweb/<slug:tenant>/", DicomWebApi),
        ("t/<slug:tenant>/", TenantPageView),
    ],
)
def test_every_tenant_route_uses_its_base_class(prefix, base):
    for route, pattern in _routes(get_resolver().url_patterns):
        if route.startswith(prefix):
            view = _view_class(pattern)
            assert view is not None, route
            assert issubclass(view, base), route


def test_dicomweb_base_is_a_tenant_api():
    # So DICOMweb gets the same authentication, membership check, tenant scope and guarded methods.
    assert issubclass(DicomWebApi, TenantApi)


@pytest.mark.parametrize(
    ("word", "allowed"), [("unscoped_objects", UNSCOPED_ALLOWED), ("dangerously_", DANGEROUS_ALLOWED)]
)
def test_escape_hatches_only_in_allow_listed_files(word, allowed):
    found = {str(p.relative_to(ROOT)) for p in _source_files() if word in p.read_text()}
    assert found - set(allowed) == set()
    assert set(allowed) - found == set(), "an allow-list entry no longer needed"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_only_access_imports_guardian():
    offenders = [
        str(path.relative_to(ROOT))
        for path in _source_files()
        if any(n == "guardian" or n.startswith("guardian.") for n in _imports(path))
        and str(path.relative_to(ROOT)) not in GUARDIAN_ALLOWED
    ]
    assert offenders == []


def _celery_tasks():
    from celery import current_app

    current_app.loader.import_default_modules()
    return current_app.tasks


def test_every_tenant_task_takes_tenant_id():
    ours = [t for name, t in _celery_tasks().items() if name.split(".")[0] in OUR_APPS]
    assert ours
    for task in ours:
        if task.name in FANOUT_TASKS or task.name in PLATFORM_TASKS:
            continue
        params = inspect.signature(task.run).parameters
        assert "tenant_id" in params, task.name
        assert params["tenant_id"].kind is inspect.Parameter.KEYWORD_ONLY, task.name


def test_every_task_queued_by_name_exists():
    """Services queue tasks by name (tenants.jobs), so a misspelt name must fail here, not in the broker."""
    registered = _celery_tasks()
    named = set()
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in QUEUEING:
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant), f"{path}: name the task with a string literal"
                named.add(first.value)
    assert named
    assert named - set(registered) == set()


@pytest.mark.parametrize("method", ["initial", "dispatch", "get_permissions", "get_authenticators"])
def test_tenant_api_refuses_overrides_of_its_guards(method):
    with pytest.raises(TypeError):
        type("Sneaky", (TenantApi,), {method: lambda self, *a, **k: None})


@pytest.mark.parametrize("method", ["dispatch", "setup"])
def test_tenant_page_refuses_overrides_of_its_guards(method):
    with pytest.raises(TypeError):
        type("Sneaky", (TenantPageView,), {method: lambda self, *a, **k: None})
