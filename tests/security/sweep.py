"""The route table of the isolation sweep: every URL pattern of the project, found by walking the resolver, and how
each tenant route's path parameters are filled with real objects of tenant A.

A route missing from `FILL` or `PUBLIC` fails the sweep: whoever adds a route says here how to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver

TENANT_PREFIXES = ("t/<slug:tenant>/", "api/v1/t/<slug:tenant>/", "dicomweb/<slug:tenant>/")

# Routes outside any tenant, each with why the sweep leaves it alone.
PUBLIC: dict[str, str] = {
    "portal:home": "the tenant chooser; lists only the caller's own memberships",
    "portal:health": "the node's health for load balancers: PostgreSQL, Redis, clock offset; no tenant data",
    "accounts:login": "the login page",
    "accounts:mfa": "second factor of the login; needs the caller's own half-done session",
    "accounts:mfa_setup": "sets up the caller's own authenticator",
    "accounts:logout": "ends the caller's own session",
    "accounts:set_password": "reached with a signed one-time token only",
    "invitations:accept": "accepting one's own invitation, needs the signed token in the session",
    "invitations:open": "an invitation link: the token is the credential (hashed at rest)",
    "api-schema": "the OpenAPI description of the routes, no tenant data",
    "api-docs": "Swagger UI over the schema, no tenant data",
}
OPS_PREFIX = "ops/"  # Django admin of platform operators: staff-only, its own tests (tests/*/test_ops_admin.py)

# Tenant route name -> {path parameter: key of the sweep's World}. "tenant" is filled by the sweep itself.
FILL: dict[str, dict[str, str]] = {
    # pages
    "portal:tenant_home": {},
    "portal:members": {},
    "portal:member_invite": {},
    "portal:invitation_revoke": {"public_id": "invitation"},
    "portal:member_unlock": {"public_id": "member"},
    "portal:member_role": {"public_id": "member"},
    "portal:member_end_date": {"public_id": "member"},
    "portal:member_end": {"public_id": "member"},
    "portal:api_tokens": {},
    "portal:api_token_revoke": {"public_id": "token"},
    "portal:networks": {},
    "portal:export_policy": {},
    "portal:audit_disclosure_suspend": {},
    "portal:network_remove": {"public_id": "trusted_network"},
    "portal:recertification": {},
    "portal:recertification_decide": {"public_id": "recertification_item"},
    "portal:audit": {},
    "portal:audit_export": {},
    "portal:audit_export_json": {},
    "portal:audit_export_xml": {},
    "portal:audit_event": {"public_id": "audit_event"},
    "portal:audit_change": {"change_id": "audit_change"},
    "portal:audit_disclosures": {},
    "portal:audit_breach_scope": {},
    "portal:audit_dashboard": {},
    "portal:audit_compliance": {},
    "portal:audit_compliance_pdf": {},
    "portal:audit_alerts": {},
    "portal:audit_alert": {"public_id": "alert"},
    "portal:audit_alert_incident": {"public_id": "alert"},
    "portal:audit_incidents": {},
    "portal:audit_incident": {"public_id": "incident"},
    "portal:upload": {},
    "portal:upload_files": {},
    "portal:ingest": {},
    "portal:ingest_batch": {"batch": "batch"},
    "portal:studies": {},
    "portal:study": {"public_id": "study"},
    "portal:study_history": {"public_id": "study"},
    "portal:series_thumbnail": {"public_id": "series"},
    "portal:study_access": {"public_id": "study"},
    "portal:share_revoke": {"public_id": "study", "share_id": "share"},
    "portal:share_invitation_withdraw": {"public_id": "study", "invitation_id": "share_invitation"},
    "portal:break_glass": {},
    "portal:break_glass_review": {},
    "portal:break_glass_sign_off": {"public_id": "break_glass"},
    "portal:break_glass_end": {"public_id": "break_glass"},
    "portal:study_export": {"public_id": "study"},
    "portal:export_search": {},
    "portal:export_progress": {"public_id": "export"},
    "portal:export_status": {"public_id": "export"},
    "portal:export_download": {"public_id": "export"},
    "portal:devices": {},
    "portal:device_register": {},
    "portal:device_request": {},
    "portal:device_wipe_orders": {},
    "portal:device_detail": {"public_id": "device"},
    "portal:device_approve": {"public_id": "device"},
    "portal:device_revoke": {"public_id": "device"},
    "portal:device_step": {"public_id": "device"},
    "portal:device_sanitization": {"public_id": "device"},
    "portal:training_me": {},
    "portal:training_matrix": {},
    "portal:training_matrix_csv": {},
    "portal:training_import": {},
    "portal:training_queue": {},
    "portal:training_review": {"public_id": "completion", "verdict": "verdict"},
    "portal:training_courses": {},
    "portal:retention": {},
    "portal:retention_policy_stop": {"public_id": "retention_policy"},
    "portal:retention_proposals": {},
    "portal:retention_proposal_decide": {"public_id": "retention_proposal"},
    "portal:retention_holds": {},
    "portal:retention_hold_lift": {"public_id": "legal_hold"},
    "portal:training_operators": {},
    "portal:training_person": {"person_id": "person"},
    "portal:training_evidence": {"public_id": "completion"},
    # REST API
    "api:members": {},
    "api:member": {"public_id": "member"},
    "api:member_end": {"public_id": "member"},
    "api:invitations": {},
    "api:invitation": {"public_id": "invitation"},
    "api:api_tokens": {},
    "api:api_token": {"public_id": "token"},
    "api:networks": {},
    "api:network": {"public_id": "trusted_network"},
    "api:audit_event_list": {},
    "api:audit_event_detail": {"public_id": "audit_event"},
    "api:audit_change_list": {},
    "api:study_shares": {"public_id": "study"},
    "api:study_share_invitations": {"public_id": "study"},
    "api:study_share_invitation": {"public_id": "study", "invitation_id": "share_invitation"},
    "api:study_share": {"public_id": "study", "share_id": "share"},
    "api:break_glass": {},
    "api:retention_policies": {},
    "api:retention_policy_stop": {"public_id": "retention_policy"},
    "api:retention_proposals": {},
    "api:retention_proposal_approve": {"public_id": "retention_proposal"},
    "api:retention_proposal_reject": {"public_id": "retention_proposal"},
    "api:retention_holds": {},
    "api:retention_hold_lift": {"public_id": "legal_hold"},
    "api:devices": {},
    "api:device_requests": {},
    "api:device_enrol": {},
    "api:device_self": {},
    "api:device_self_refresh": {},
    "api:device_self_wipe": {},
    "api:device_policy": {},
    "api:device_wipe_orders": {},
    "api:device": {"public_id": "device"},
    "api:device_history": {"public_id": "device"},
    "api:device_approve": {"public_id": "device"},
    "api:device_revoke": {"public_id": "device"},
    "api:device_suspend": {"public_id": "device"},
    "api:device_report_lost": {"public_id": "device"},
    "api:device_order_wipe": {"public_id": "device"},
    "api:device_sanitization": {"public_id": "device"},
    "api:device_retire": {"public_id": "device"},
    "api:device_custodian": {"public_id": "device"},
    "api:device_grants": {"public_id": "device"},
    "api:device_enrolment_code": {"public_id": "device"},
    "api:device_media_exports": {"public_id": "device"},
    "api:training_courses": {},
    "api:training_requirements": {},
    "api:training_requirement": {"public_id": "requirement"},
    "api:training_completions": {},
    "api:training_import": {},
    "api:training_completion": {"public_id": "completion"},
    "api:training_approve": {"public_id": "completion"},
    "api:training_reject": {"public_id": "completion"},
    "api:training_supersede": {"public_id": "completion"},
    "api:training_person_status": {"person_id": "person"},
    "api:training_matrix_csv": {},
    # DICOMweb
    "dicomweb:studies": {},
    "dicomweb:study": {"study": "study_uid"},
    "dicomweb:series-search": {},
    "dicomweb:instances-search": {},
    "dicomweb:study-series-search": {"study": "study_uid"},
    "dicomweb:study-instances-search": {"study": "study_uid"},
    "dicomweb:series-instances-search": {"study": "study_uid", "series": "series_uid"},
    "dicomweb:series": {"study": "study_uid", "series": "series_uid"},
    "dicomweb:instance": {"study": "study_uid", "series": "series_uid", "instance": "instance_uid"},
    "dicomweb:study-metadata": {"study": "study_uid"},
    "dicomweb:series-metadata": {"study": "study_uid", "series": "series_uid"},
    "dicomweb:instance-metadata": {"study": "study_uid", "series": "series_uid", "instance": "instance_uid"},
    "dicomweb:frames": {"study": "study_uid", "series": "series_uid", "instance": "instance_uid", "frames": "frame"},
    "dicomweb:study-rendered": {"study": "study_uid"},
    "dicomweb:series-rendered": {"study": "study_uid", "series": "series_uid"},
    "dicomweb:instance-rendered": {"study": "study_uid", "series": "series_uid", "instance": "instance_uid"},
    "dicomweb:frames-rendered": {
        "study": "study_uid",
        "series": "series_uid",
        "instance": "instance_uid",
        "frames": "frame",
    },
    "dicomweb:study-thumbnail": {"study": "study_uid"},
    "dicomweb:series-thumbnail": {"study": "study_uid", "series": "series_uid"},
    "dicomweb:instance-thumbnail": {"study": "study_uid", "series": "series_uid", "instance": "instance_uid"},
    "dicomweb:wado-uri": {},
}


@dataclass(frozen=True)
class Route:
    pattern: str  # e.g. "api/v1/t/<slug:tenant>/members/<str:public_id>/"
    name: str  # namespaced, e.g. "api:member"
    callback: Any

    @property
    def door(self) -> str:
        if self.pattern.startswith("api/"):
            return "api"
        if self.pattern.startswith("dicomweb/"):
            return "dicomweb"
        return "page"

    @property
    def methods(self) -> list[str]:
        """The HTTP methods the view answers, OPTIONS and HEAD aside (HEAD is GET without a body; OPTIONS
        answers only with the Allow header)."""
        view = getattr(self.callback, "view_class", None) or getattr(self.callback, "cls", None)
        if view is None:
            return ["get", "post"]
        names = getattr(view, "http_method_names", ["get", "post", "put", "patch", "delete"])
        return [m for m in ("get", "post", "put", "patch", "delete") if m in names and hasattr(view, m)]

    def path(self, tenant: str, values: dict[str, str]) -> str:
        url = self.pattern.replace("<slug:tenant>", tenant)
        for param, key in FILL[self.name].items():
            for converter in ("str", "uuid", "int", "slug"):
                url = url.replace(f"<{converter}:{param}>", str(values[key]))
        assert "<" not in url, f"unfilled parameter in {self.name}: {url}"
        return "/" + url


def routes() -> list[Route]:
    """Every URL pattern of the project, walking the resolver recursively."""
    found: list[Route] = []

    def walk(resolver: URLResolver, prefix: str, namespace: str) -> None:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                ns = namespace + (f"{entry.namespace}:" if entry.namespace else "")
                walk(entry, prefix + str(entry.pattern), ns)
            elif isinstance(entry, URLPattern):
                found.append(Route(prefix + str(entry.pattern), namespace + (entry.name or ""), entry.callback))

    walk(get_resolver(), "", "")
    return found


def tenant_routes() -> list[Route]:
    return [r for r in routes() if r.pattern.startswith(TENANT_PREFIXES)]


def openapi_operations() -> set[tuple[str, str]]:
    """(path with `{param}` placeholders, method) of every operation of the OpenAPI schema, generated in-process."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {
        (path, method)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }


def as_openapi_path(pattern: str) -> str:
    import re

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", pattern)
