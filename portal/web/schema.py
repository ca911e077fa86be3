"""How the OpenAPI schema describes our authentication (drf-spectacular extensions, registered on import), and
the one operation that is not a DRF view: /health/ (`health_path_add`, a post-processing hook of /api/schema/)."""

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object

from portal.web.health import HEALTH_BODY_SCHEMA


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.web.authentication.BearerTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Bearer")  # noqa: S106


class VerifiedSessionScheme(OpenApiAuthenticationExtension):
    target_class = "portal.web.authentication.VerifiedSessionAuthentication"
    name = "verifiedSession"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": "A browser session signed in with password and TOTP.",
        }


HEALTH_PATH = "/health/"


def health_path_add(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Document /health/ (portal.views.HealthView, a plain Django view the generator does not see): the node's
    liveness and readiness, asked without credentials (`security: [{}]`), answering nothing of any tenant."""
    answer = {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}
    no_store = {"Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}}}
    result.setdefault("components", {}).setdefault("schemas", {})["Health"] = HEALTH_BODY_SCHEMA
    result.setdefault("paths", {})[HEALTH_PATH] = {
        "get": {
            "operationId": "health",
            "summary": "Liveness and readiness of this node (no credentials, no patient data)",
            "description": "For load balancers and monitoring. 200 when PostgreSQL and Redis answer and the "
            "application's clock is within HEALTH_CLOCK_MAX_OFFSET_SECONDS of PostgreSQL's; 503 otherwise, the body "
            "saying which part failed. It needs no credentials and says nothing of any tenant, person or study. "
            "A clock past the limit raises a security alert on the platform's trail.",
            "tags": ["health"],
            "security": [{}],
            "responses": {
                "200": {"description": "The node is healthy.", "content": answer, "headers": no_store},
                "503": {"description": "A part failed: see the body.", "content": answer, "headers": no_store},
            },
        }
    }
    return result
