"""Reads about tenants, members and API tokens.

This module is allow-listed for `unscoped_objects` where a read must happen before a scope can exist: finding a
user's memberships across tenants for platform work, and finding a bearer token or an invitation by its digest.
Whether a person is a current member at all is the first layer of the permission decision, in tenants.access.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from uuid import UUID

from axes.models import AccessAttempt
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.utils import timezone

from tenants import access
from tenants.db.base import prepared_statements, prepared_together
from tenants.models import ApiToken, Invitation, Membership, Role, Tenant, TrustedNetwork, User
from tenants.scoping import current_tenant, platform_scope, tenant_scope


def tenant_get_for_member(
    *, user: Any, slug: str, read: Tenant | None = None, membership_read: tuple[Membership | None] | None = None
) -> tuple[Tenant, Membership]:
    """The tenant named in a URL and the user's membership in it; a non-member gets `NotVisible`, the same as
    for a tenant that does not exist. `read`: a tenant row this request has already read (its API token's); used
    instead of reading it again when its slug is the one named, and so is `membership_read`, the user's active
    membership of that tenant read with it (`api_token_authenticate`), checked as `membership_current_get`
    checks the one it reads."""
    if read is not None and read.slug == slug:
        tenant: Tenant | None = read
    else:
        tenant, membership_read = Tenant.objects.filter(slug=slug).first(), None
    if tenant is None:
        raise access.NotVisible()
    if membership_read is not None:
        membership = access.membership_current_of(user=user, tenant=tenant, active=membership_read[0])
    else:
        membership = access.membership_current_get(user=user, tenant=tenant)
    if membership is None:
        raise access.NotVisible()
    return tenant, membership


def tenant_for_called_ae(*, ae_title: str) -> Tenant | None:
    """The active tenant whose archive answers to this called AE title (the DICOM listener's one way in)."""
    tenant = Tenant.objects.filter(ae_title=(ae_title or "").strip().upper()).first()
    return tenant if tenant is not None and tenant.is_active else None


def membership_list_across_tenants(*, user: User) -> models.QuerySet[Membership]:
    """Every active membership of `user` in any tenant, with its tenant: for platform work (deactivation)."""
    return Membership.unscoped_objects.filter(user=user, status=Membership.Status.ACTIVE).select_related("tenant")


def api_token_list_across_tenants(*, user: User) -> models.QuerySet[ApiToken]:
    """Every unrevoked token of `user` in any tenant, with its tenant: for platform work (deactivation)."""
    return ApiToken.unscoped_objects.filter(user=user, revoked_at__isnull=True).select_related("tenant")


def membership_list(
    *, actor: Any, include_ended: bool = True, role: str | None = None, status: str | None = None
) -> models.QuerySet[Membership]:
    """The current tenant's memberships that `actor` may see (`tenants.view_members`), optionally only those
    with `role` and/or `status`."""
    qs = access.visible(actor, "tenants.view_members", Membership.objects.all())
    if not include_ended:
        qs = qs.filter(status=Membership.Status.ACTIVE)
    if role:
        qs = qs.filter(role=role)
    if status:
        qs = qs.filter(status=status)
    return qs.select_related("user").order_by("status", "user__username")


def membership_get(*, actor: Any, public_id: UUID | str) -> Membership:
    """One membership of the current tenant by public id, or `NotVisible` (also for a malformed id)."""
    try:
        return membership_list(actor=actor).get(public_id=public_id)
    except (Membership.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def api_token_list(*, actor: Any) -> models.QuerySet[ApiToken]:
    """The actor's own tokens in the current tenant, newest first."""
    if not isinstance(actor, User):
        return ApiToken.objects.none()
    return ApiToken.objects.filter(user=actor).order_by("-created_at")


def api_token_get(*, actor: Any, public_id: UUID | str) -> ApiToken:
    """One token of the current tenant: the actor's own, or any for a member with `tenants.manage_members`."""
    qs = ApiToken.objects.all()
    if not access.has_perm(actor, "tenants.manage_members", current_tenant()):
        qs = qs.filter(user=actor)
    try:
        return qs.select_related("user").get(public_id=public_id)
    except (ApiToken.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def api_token_get_for_operator(*, public_id: UUID | str) -> ApiToken:
    """Any token of the current tenant, for platform operators' commands (`manage.py api_token revoke`), which
    act as the system, not as a member. Raises `NotVisible` when the tenant has no such token."""
    try:
        return ApiToken.objects.select_related("user").get(public_id=public_id)
    except (ApiToken.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


# A request's own first statement, sent in the same round trip as its token's and its decision's (`statement_ahead`
# of `api_token_authenticate`): given the token's tenant (its scope open), the statement and its values, or None.
StatementAhead = Callable[[Tenant], "tuple[str, Any] | None"]


def api_token_authenticate(
    *, raw: str, decision_ahead: bool = False, statement_ahead: StatementAhead | None = None
) -> ApiToken | None:
    """The usable token whose digest matches `raw`, with its user and tenant; None otherwise.

    Runs before any scope (the tenant comes from the token), so it reads unscoped. `decision_ahead`: the request
    is a read of patient data (a DICOMweb search), whose first permission decision will ask the gates' and the
    tenant permissions' statements for the token's user and tenant; when this process has seen the token before,
    they are sent with the token's own statement, in its round trip (`_token_read_with_decision`).

    `statement_ahead` (with `decision_ahead`): the statement the request will send next, whatever the decision (a
    WADO-RS retrieval's rows), sent in that same round trip too, in the token's tenant's scope; its rows are on the
    token as `read_ahead`, (tenant id, the statement and its values, its rows), for the request to use only as its
    decision allows (studies.selectors.storage `retrieval_rows`). `read_ahead` is None when they were not read so.
    """
    digest = ApiToken.digest_of(raw)
    params = [Membership.Status.ACTIVE, digest]
    owner = _TOKEN_OWNERS.get(digest) if decision_ahead else None
    row, ahead, read_ahead = (
        _token_read_with_decision(params, *owner, statement_ahead) if owner is not None else (None, None, None)
    )
    if row is None:
        # Unscoped, as `ApiToken.unscoped_objects` and `Membership.unscoped_objects` read; prepared once per
        # connection (tenants.db).
        with platform_scope(), prepared_statements(), connection.cursor() as cursor:
            cursor.execute(_token_statement(), params)
            row = cursor.fetchone()
    if row is None:
        return None
    read = len(row) - len(Membership._meta.concrete_fields)
    token, user, tenant = _rows_built(row[:read], _JOINED)
    token.user, token.tenant = user, tenant
    if not token.is_usable() or not user.is_active:
        return None
    # The membership the request will ask for (the token works only for its own tenant), read in the same
    # statement: its first active one by id, as `access.membership_current_get` reads it; None when there is none.
    token.membership_read = (None if row[read] is None else _rows_built(row[read:], (Membership,))[0],)
    token.read_ahead = None
    if decision_ahead:
        if ahead is not None and owner is not None and (user.pk, tenant.pk) == (owner[0].pk, owner[1].pk):
            access.decision_read_ahead(actor=user, tenant_id=tenant.pk, rows=ahead)
            token.read_ahead = read_ahead
        if len(_TOKEN_OWNERS) >= _TOKEN_OWNERS_MAX:
            _TOKEN_OWNERS.clear()
        _TOKEN_OWNERS[digest] = (user, tenant)
    return token


# The user and tenant of each token digest this process has authenticated with `decision_ahead` (a token's user and
# tenant never change), for `_token_read_with_decision`: a request's first read of its token cannot know them
# otherwise. At most this many; then forgotten all at once and learnt again.
_TOKEN_OWNERS: dict[str, tuple[User, Tenant]] = {}
_TOKEN_OWNERS_MAX = 1024


def _token_read_with_decision(
    params: list[Any], user: User, tenant: Tenant, statement_ahead: StatementAhead | None = None
) -> tuple[
    tuple[Any, ...] | None,
    list[list[tuple[Any, ...]]] | None,
    tuple[int, tuple[str, Any], list[tuple[Any, ...]]] | None,
]:
    """The token's row (`_token_statement`) and, in the same round trip, the answers of the statements of the first
    patient-data decision (`access.decision_statements_ahead`) for `user` in `tenant`, the token's owners when this
    process last read it (their rows then, used only for their ids): `EXECUTE token(..); EXECUTE gate(..); ...`
    (tenants.db `prepared_together`), every statement read afresh, in one snapshot. All of it under `tenant`'s scope:
    the token's row is one of that tenant's, so the database's row security shows it as the platform's scope
    would; a row not found that way (None) is read again the usual way by the caller. (None, None) when the decision
    would not send those statements together. With `statement_ahead`, its statement last in the same string, and
    (the tenant's id, that statement, its rows) third, else None."""
    with tenant_scope(tenant):
        statements = access.decision_statements_ahead(user=user, tenant=tenant)
        if statements is None:
            return None, None, None
        own = statement_ahead(tenant) if statement_ahead is not None else None
        token_rows, *ahead = prepared_together([(_token_statement(), params), *statements, *([own] if own else [])])
    read_ahead = (tenant.pk, own, ahead.pop()) if own else None
    return (token_rows[0] if token_rows else None), ahead, read_ahead


_JOINED = (ApiToken, User, Tenant)


@functools.cache
def _token_statement() -> str:
    """`api_token_authenticate`'s one statement: the token by its digest (unique), with its user, its tenant and
    the user's first active membership of that tenant by id (the one `access.membership_current_get` reads; NULLs
    when there is none), written as SQL from the models' metadata (the ORM compiled the same join for about 0.5 ms
    of CPU on every request, and the membership was a statement of its own: docs/BENCHMARKS.md). Every value a
    parameter: the membership's status, then the digest."""
    quote = connection.ops.quote_name
    aliases = ("t", "u", "n", "m")
    columns = ", ".join(
        f"{alias}.{quote(field.column or field.attname)}"
        for alias, model in zip(aliases, (*_JOINED, Membership), strict=True)
        for field in model._meta.concrete_fields
    )
    token, user, tenant, membership = (quote(model._meta.db_table) for model in (*_JOINED, Membership))
    user_fk, tenant_fk = (quote(ApiToken.user.field.column), quote(ApiToken.tenant.field.column))
    member_user, member_tenant = (quote(Membership.user.field.column), quote(Membership.tenant.field.column))
    return (
        f"SELECT {columns} FROM {token} t JOIN {user} u ON u.id = t.{user_fk}"  # noqa: S608 # nosec B608
        f" JOIN {tenant} n ON n.id = t.{tenant_fk}"
        f" LEFT JOIN LATERAL (SELECT * FROM {membership} WHERE {member_tenant} = t.{tenant_fk}"
        f" AND {member_user} = t.{user_fk} AND status = %s ORDER BY id LIMIT 1) m ON true"
        " WHERE t.digest = %s LIMIT 1"
    )


def _rows_built(row: tuple[Any, ...], models_in_row: tuple[type[models.Model], ...]) -> list[Any]:
    """Model instances from one row of `_token_statement`, each field's value converted as the ORM converts it
    (a JSONField arrives as text, for one): `Model.from_db` with each model's field names and converters worked out
    once per process (`_row_plan`), not per field per request (a third of this function's CPU, and four times as
    much on a worker woken after an idle gap: docs/BENCHMARKS.md, "h1 branch, session 9")."""
    built, start = [], 0
    for model in models_in_row:
        attnames, converted = _row_plan(model)
        end = start + len(attnames)
        values: Any = row[start:end]
        if converted:
            values = list(values)
            for index, field, converters in converted:
                value = values[index]
                for converter in converters:
                    value = converter(value, field, connection)
                values[index] = value
        built.append(model.from_db(connection.alias, attnames, values))
        start = end
    return built


@functools.cache
def _row_plan(model: type[models.Model]) -> tuple[list[str], list[tuple[int, Any, list[Any]]]]:
    """`model`'s concrete fields' attribute names in order, and (index, field, converters) of each field that has
    converters (`Field.get_db_converters`, what the ORM's compiler asks each field for)."""
    fields = model._meta.concrete_fields
    converted = []
    for index, field in enumerate(fields):
        converters = field.get_db_converters(connection)
        if converters:
            converted.append((index, field, converters))
    return [field.attname for field in fields], converted


def invitation_list(*, actor: Any, pending_only: bool = False) -> models.QuerySet[Invitation]:
    """The current tenant's invitations that `actor` may see (`tenants.view_members`), newest first."""
    qs = access.visible(actor, "tenants.view_members", Invitation.objects.all())
    if pending_only:
        qs = qs.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now())
    return qs.select_related("invited_by", "accepted_by").order_by("-created_at")


def invitation_get(*, actor: Any, public_id: UUID | str) -> Invitation:
    """One invitation of the current tenant by public id, or `NotVisible` (also for a malformed id)."""
    try:
        return invitation_list(actor=actor).get(public_id=public_id)
    except (Invitation.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def invitation_by_token(*, raw: str) -> Invitation | None:
    """The invitation whose link carries `raw`, with its tenant, whatever its state; None for an unknown token.

    The person opening the link is not a member yet, so no scope exists: it reads unscoped, by the digest."""
    if not raw or len(raw) > 200:
        return None
    return Invitation.unscoped_objects.filter(digest=Invitation.digest_of(raw)).select_related("tenant").first()


def locked_out_usernames(*, usernames: list[str]) -> set[str]:
    """Which of `usernames` (lower case, as django-axes counts them) are locked out now from some address."""
    if not usernames:
        return set()
    attempts = AccessAttempt.objects.filter(
        username__in=usernames, failures_since_start__gte=settings.AXES_FAILURE_LIMIT
    )
    cool_off = settings.AXES_COOLOFF_TIME
    if cool_off:
        attempts = attempts.filter(attempt_time__gt=timezone.now() - cool_off)
    return set(attempts.values_list("username", flat=True))


def trusted_network_list(*, actor: Any) -> models.QuerySet[TrustedNetwork]:
    """The current tenant's trusted networks, for a member with `tenants.manage_networks` (none for others)."""
    return access.visible(actor, "tenants.manage_networks", TrustedNetwork.objects.all()).order_by("network")


def trusted_network_get(*, actor: Any, public_id: UUID | str) -> TrustedNetwork:
    """One trusted network of the current tenant by public id, or `NotVisible` (also for a malformed id)."""
    try:
        return trusted_network_list(actor=actor).get(public_id=public_id)
    except (TrustedNetwork.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def compliance_officer_emails() -> list[str]:
    """The current tenant's active compliance officers' addresses (incident and break-glass mail)."""
    return sorted(
        {
            m.user.email
            for m in Membership.objects.filter(
                role=Role.COMPLIANCE_OFFICER, status=Membership.Status.ACTIVE
            ).select_related("user")
            if m.is_current() and m.user.is_active and m.user.email
        }
    )
