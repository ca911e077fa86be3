"""API tokens: created for oneself after a sign-in with MFA, revoked by their owner or a tenant admin."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record
from tenants import access
from tenants.models import ApiToken, Tenant, User
from tenants.scoping import tenant_scope

API_TOKEN_PREFIX = "enc_"  # noqa: S105 -- a marker for secret scanners, not a secret


def tokens_revoke(qs: Any, *, at: datetime) -> int:
    """Revoke every unrevoked token of `qs` (the caller's scope decides which tenant). Returns how many."""
    count = 0
    for token in qs.filter(revoked_at__isnull=True):
        token.revoked_at = at
        token.save(update_fields=["revoked_at", "updated_at"])
        count += 1
    return count


@transaction.atomic
def api_token_create(
    *, actor: User, tenant: Tenant, name: str, days: int | None = None, via_token: bool = False
) -> tuple[ApiToken, str]:
    """Create a bearer token for `actor` in the current tenant. Returns the row and the token, shown once.

    Needs a current membership (checked by the caller's base class or command). A caller authenticated by a token
    (`via_token`) is refused: otherwise a stolen token could renew itself past its expiry. Tokens are made after
    a sign-in with MFA, or by an operator's command. Records API_TOKEN_CREATED.
    """
    if via_token:
        raise access.Forbidden("API tokens are created from a signed-in browser session, not with a token.")
    days = settings.API_TOKEN_DEFAULT_DAYS if days is None else days
    if not 1 <= days <= settings.API_TOKEN_MAX_DAYS:
        raise ValidationError({"days": f"A token lives from 1 to {settings.API_TOKEN_MAX_DAYS} days."})
    if not name.strip():
        raise ValidationError({"name": "Give the token a name, such as what will use it."})
    raw = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        tenant=tenant,
        user=actor,
        name=name.strip(),
        prefix=raw[: len(API_TOKEN_PREFIX) + 6],
        digest=ApiToken.digest_of(raw),
        expires_at=timezone.now() + timedelta(days=days),
    )
    token.full_clean()
    token.save()
    audit_event_record(
        event=EventType.API_TOKEN_CREATED,
        actor=actor,
        target=token,
        extra={"expires_at": token.expires_at.isoformat(), "days": days},
    )
    return token, raw


@transaction.atomic
def api_token_revoke(*, actor: User, token: ApiToken) -> ApiToken:
    """Revoke a token: its owner may, and so may a member with `tenants.manage_members`. Idempotent."""
    if token.user_id != actor.pk:
        access.require(actor, "tenants.manage_members", token, visible_perm="tenants.manage_members")
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at", "updated_at"])
    audit_event_record(event=EventType.API_TOKEN_REVOKED, actor=actor, target=token)
    return token


def api_token_touch(*, token: ApiToken) -> None:
    """Note a token's use, at most once a minute so that busy integrations do not write on every call."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        with tenant_scope(token.tenant):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
