"""Who sees which study beyond the tenant-wide permission: registered with tenants.access, which decides.

- a grant (a share) counts only while its StudyShare is in force: not expired, not revoked;
- a referring physician sees the studies that name them as referring physician;
- a break-glass grant shows its study until it expires or is ended.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q
from django.utils import timezone

from studies.models import BreakGlassGrant, StudyShare, person_name_key
from tenants.access import membership_current_get
from tenants.models import Role
from tenants.scoping import current_tenant


def study_visibility(actor: Any, granted: Q) -> Q:
    now = timezone.now()
    shared = StudyShare.objects.filter(grantee=actor, revoked_at__isnull=True, expires_at__gt=now).values("study_id")
    glass = BreakGlassGrant.objects.filter(user=actor, ended_at__isnull=True, expires_at__gt=now).values("study_id")
    condition = (granted & Q(pk__in=shared)) | Q(pk__in=glass)
    membership = membership_current_get(user=actor, tenant=current_tenant())
    if membership is not None and membership.role == Role.REFERRING_PHYSICIAN:
        key = person_name_key(f"{actor.last_name}^{actor.first_name}")
        if key:
            condition |= Q(referring_physician_key=key)
    return condition
