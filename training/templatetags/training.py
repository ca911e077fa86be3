"""`{% training_warnings %}`: the banner that tells a member, on every tenant page, which of their required
courses is expiring, expired or missing (the warning of a warn-only requirement, and the reminder before a
blocking one lapses)."""

from __future__ import annotations

from typing import Any

from django import template

from tenants.scoping import current_tenant_or_none
from training.selectors import person_status

register = template.Library()


@register.inclusion_tag("training/_banner.html", takes_context=True)
def training_warnings(context: Any) -> dict[str, Any]:
    request = context.get("request")
    tenant = context.get("tenant")
    user = getattr(request, "user", None)
    if tenant is None or user is None or not user.is_authenticated or current_tenant_or_none() is None:
        return {"warnings": []}
    membership = context.get("membership")  # TenantPageView's: saves looking up the role again
    role = getattr(membership, "role", None)
    statuses = [s for s in person_status(user=user, role=role) if s.state != "current"]
    return {"warnings": statuses, "tenant": tenant}
