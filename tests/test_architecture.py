"""The rules of shared/STYLE.md that code can check: one tenant scope, one permission decision, base classes."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from django.apps import apps
from django.urls import URLPattern, URLResolver, get_resolver

from portal.api.base import TenantApi
from portal.views import TenantPageView
from studies.dicomweb.base import DicomWebApi
from tenants.scoping import TenantScopedManager

ROOT = Path(__file__).resolve().parents[1]
OUR_APPS = ("portal", "tenants", "audit", "studies", "training", "devices")

# Files where `unscoped_objects` may appear, each with its reason.
UNSCOPED_ALLOWED = {
    "tenants/models.py": "defines the bypass",
    "tenants/scoping.py": "documents the bypass",
    "audit/models.py": "defines the bypass on AuditEvent",
    "tenants/selectors.py": "reads that open a scope: a user's memberships, a bearer token by digest",
    "tenants/tasks.py": "fan-out: which tenants have expired memberships",
    "studies/tasks.py": "fan-out: which tenants have stuck ingest items",
    "audit/selectors.py": "the chain verifier walks every tenant's chain",
    "audit/admin.py": "operators' read-only view of events across tenants (no patient fields)",
    "tenants/admin.py": "operators' view of memberships across tenants",
    "devices/admin.py": "operators' read-only view of devices across tenants (no patient data)",
}
DANGEROUS_ALLOWED: dict[str, str] = {}
GUARDIAN_ALLOWED = {
    "tenants/access.py",
    "studies/models.py",  # guardian's direct-foreign-key permission models for studies, defined, never queried
}
# Routed views that are not tenant APIs or pages, with the reason they need no tenant.
PUBLIC_VIEWS = {
    "SpectacularAPIView": "OpenAPI schema: requires authentication, holds no tenant data",
    "SpectacularSwaggerView": "the schema's browser",
    "SpectacularSwaggerSplitView": "the schema's browser, its start script apart (the CSP allows no inline script)",
}
FANOUT_TASKS = {
    "tenants.tasks.memberships_end_due",
    "studies.tasks.ingest_sweep",
    "studies.tasks.break_glass_expire",
    "studies.tasks.shares_cleanup",
    "studies.tasks.read_tallies_flush",
}
# Models with a tenant column that are not tenant data, each with its reason.
UNSCOPED_MODELS = {
    "audit.AuditChain": "the lock row of a hash chain, also of the platform chain (no tenant); only audit.services "
    "and audit.selectors touch it, by key",
}


def _source_files() -> list[Path]:
    files = []
    for app in OUR_APPS:
        base = ROOT / app
        if base.exists():
            files += [p for p in base.rglob("*.py") if "migrations" not in p.parts]
    return files


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def _view_class(pattern: URLPattern):
    callback = pattern.callback
    return getattr(callback, "view_class", None) or getattr(callback, "cls", None)


def test_every_tenant_model_uses_the_scoped_manager():
    checked = 0
    for model in apps.get_models():
        if model._meta.app_label not in OUR_APPS:
            continue
        if model._meta.label in UNSCOPED_MODELS:
            continue
        if any(f.name == "tenant" for f in model._meta.get_fields()):
            checked += 1
            assert isinstance(model._default_manager, TenantScopedManager), model
            assert isinstance(model.objects, TenantScopedManager), model
    assert checked >= 3


def test_every_tenant_route_uses_the_base_class():
    api_routes = page_routes = dicomweb_routes = 0
    for route, pattern in _walk(get_resolver().url_patterns):
        view = _view_class(pattern)
        if route.startswith("api/v1/t/<slug:tenant>/"):
            assert view is not None, route
            assert issubclass(view, TenantApi), route
            api_routes += 1
        elif route.startswith("t/<slug:tenant>/"):
            assert view is not None, route
            assert issubclass(view, TenantPageView), route
            page_routes += 1
        elif route.startswith("dicomweb/<slug:tenant>/"):
            assert view is not None, route
            assert issubclass(view, DicomWebApi), route
            dicomweb_routes += 1
        elif route.startswith("api/"):
            assert view is not None, route
            assert view.__name__ in PUBLIC_VIEWS, route
    assert page_routes >= 1
    assert dicomweb_routes >= 1
    del api_routes


def test_dicomweb_base_is_a_tenant_api():
    # So DICOMweb gets the same authentication, membership check, tenant scope and guarded methods.
    assert issubclass(DicomWebApi, TenantApi)


@pytest.mark.parametrize(
    ("word", "allowed"), [("unscoped_objects", UNSCOPED_ALLOWED), ("dangerously_", DANGEROUS_ALLOWED)]
)
def test_escape_hatches_only_in_allow_listed_files(word, allowed):
    offenders = [
        str(p.relative_to(ROOT))
        for p in _source_files()
        if word in p.read_text() and str(p.relative_to(ROOT)) not in allowed
    ]
    assert offenders == []


def test_only_access_imports_guardian():
    offenders = []
    for path in _source_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "guardian" or n.startswith("guardian.") for n in names):
                rel = str(path.relative_to(ROOT))
                if rel not in GUARDIAN_ALLOWED:
                    offenders.append(rel)
    assert offenders == []


def test_every_tenant_task_takes_tenant_id():
    from portal.celery import app

    app.loader.import_default_modules()
    ours = [t for name, t in app.tasks.items() if name.split(".")[0] in OUR_APPS]
    assert ours
    for task in ours:
        if task.name in FANOUT_TASKS:
            continue
        params = inspect.signature(task.run).parameters
        assert "tenant_id" in params, task.name
        assert params["tenant_id"].kind is inspect.Parameter.KEYWORD_ONLY, task.name


@pytest.mark.parametrize("method", ["initial", "dispatch", "get_permissions", "get_authenticators"])
def test_tenant_api_refuses_overrides_of_its_guards(method):
    with pytest.raises(TypeError):
        type("Sneaky", (TenantApi,), {method: lambda self, *a, **k: None})


@pytest.mark.parametrize("method", ["dispatch", "setup"])
def test_tenant_page_refuses_overrides_of_its_guards(method):
    with pytest.raises(TypeError):
        type("Sneaky", (TenantPageView,), {method: lambda self, *a, **k: None})
