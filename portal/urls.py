from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from audit import urls as audit_urls
from devices import urls as devices_urls
from portal import views
from studies import urls as studies_urls
from studies.dicomweb.urls import patterns as dicomweb_patterns
from tenants import urls as tenants_urls
from training import urls as training_urls

tenant_pages: list[URLPattern | URLResolver] = [
    path("", views.TenantHomeView.as_view(), name="tenant_home"),
    *tenants_urls.page_patterns,
    *audit_urls.page_patterns,
    *studies_urls.page_patterns,
    *devices_urls.page_patterns,
    *training_urls.page_patterns,
]
tenant_api: list[URLPattern | URLResolver] = [
    *tenants_urls.api_patterns,
    *audit_urls.api_patterns,
    *studies_urls.api_patterns,
    *devices_urls.api_patterns,
    *training_urls.api_patterns,
]
portal_pages: list[URLPattern | URLResolver] = [
    path("", views.HomeView.as_view(), name="home"),
    path("health/", views.HealthView.as_view(), name="health"),
    path("t/<slug:tenant>/", include(tenant_pages)),
]

# /health/ is a plain Django view, which drf-spectacular does not see: a post-processing hook of the served schema
# documents it.
HEALTH_SCHEMA_HOOK = "portal.web.schema.health_path_add"

urlpatterns = [
    path("", include((portal_pages, "portal"))),
    path("accounts/", include(("portal.accounts.urls", "accounts"))),
    path("invitations/", include((tenants_urls.invitation_patterns, "invitations"))),
    path("api/v1/t/<slug:tenant>/", include((tenant_api, "api"))),
    path("dicomweb/<slug:tenant>/", include((dicomweb_patterns, "dicomweb"))),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(
            custom_settings={
                "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", HEALTH_SCHEMA_HOOK]
            }
        ),
        name="api-schema",
    ),
    # Swagger UI with its start script at `?script` rather than inline, so the CSP needs no 'unsafe-inline'.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="api/swagger_ui.html"),
        name="api-docs",
    ),
    path("ops/", admin.site.urls),
]

handler500 = "portal.errors.server_error"
