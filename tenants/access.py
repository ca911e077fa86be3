"""The one permission decision. No other module imports django-guardian.

Two layers:
1. Membership: an active, current `Membership` in the tenant (`membership_current_get`, checked by `TenantApi`
   / `TenantPageView`); its role decides who may look for images and who may break the glass (`IMAGE_ROLES`).
2. Permissions: tenant-wide permissions are django-guardian object permissions on the `Tenant` row, granted to
   the role group `<tenant slug>:<role>` (guardian's "roles with groups" pattern); grants on single objects
   (shares, in later work) are guardian object permissions on that object.

Apps widen or narrow the decision only by registering with it in their `AppConfig.ready()` (study visibility,
break-glass), so the decision stays here without this module importing the apps.

Superusers and platform staff get no shortcut: guardian's superuser bypass is never used.
An object the actor may not see is `NotVisible` (a 404, like a missing one); a visible object the actor may
not act on is `Forbidden` (a 403).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection, models
from django.db.models import Q
from django.utils import timezone
from guardian.core import ObjectPermissionChecker
from guardian.shortcuts import assign_perm, get_objects_for_user, remove_perm
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from audit.context import current_request_id
from tenants.db.base import prepared_statements, prepared_together
from tenants.models import Membership, Role, Tenant, TenantOwnedModel, User
from tenants.scoping import current_tenant_or_none, platform_scope


class NotVisible(Exception):
    """The object does not exist for this actor. Shown as a 404, the same as a missing object."""


class Forbidden(Exception):
    """The actor sees the object but may not do this to it. Shown as a 403."""

    def __init__(self, message: str = "You do not have permission to do this.", code: str = "forbidden") -> None:
        super().__init__(message)
        self.code = code


class GateRefused(Forbidden):
    """A registered gate refuses this person any patient data (their required training has lapsed, ...).
    A 403 whose message says what is missing and what to do, and whose `code` a machine can read
    (`training_expired`, `training_missing`)."""


# Gates registered by apps (AppConfig.ready): `gate(actor, tenant)` raises `GateRefused` when the person may
# have no patient data in the tenant at all, whatever their role, grants or break-glass. They are part of the one
# decision below: `has_perm` and `visible` run them for every permission that reaches patient data.
Gate = Callable[[Any, Tenant], None]
_gates: list[Gate] = []


@dataclass(frozen=True)
class GateStatement:
    """A gate's question as one statement and its answer from the rows, given at registration (`gate_register(...,
    asks=...)`) by a gate that asks the database exactly that: the decision then sends it together with the
    permissions' statement, in one round trip instead of two (tenants.db `prepared_together`), both read afresh for
    this request. `statement(actor, tenant)` gives the statement and its values (run as a prepared statement);
    `decide(actor, tenant, rows)` raises `GateRefused` as the gate itself would."""

    statement: Callable[[Any, Tenant], tuple[str, Any]]
    decide: Callable[[Any, Tenant, list[tuple[Any, ...]]], None]


_gate_statements: dict[Gate, GateStatement] = {}


PATIENT_DATA_PERMISSIONS = frozenset(
    {
        "studies.view_study",
        "tenants.view_studies",
        "tenants.upload_studies",
        "tenants.share_studies",
        "tenants.export_identified",
    }
)


class NetworkRefused(Forbidden):
    """The caller's address is outside the tenant's trusted networks. A 403 that says only that the address may
    not reach the tenant, never which ranges may."""

    def __init__(self) -> None:
        super().__init__("This organisation cannot be reached from your network address.", code="network_refused")


def gate_register(gate: Gate, *, asks: GateStatement | None = None) -> None:
    if gate not in _gates:
        _gates.append(gate)
    if asks is not None:
        _gate_statements[gate] = asks


def gates_check(actor: Any, tenant: Tenant) -> None:
    """Raise the first gate's `GateRefused` for a person in `tenant`; nothing for anyone else.

    One request asks this for every permission check it makes; a pass is remembered on the actor object for the
    rest of that request (keyed by its correlation id), so a page asks the gates once, not once per check. Outside a
    request or task run (no correlation id) nothing is remembered."""
    _gates_checked(actor, tenant, with_codenames=False)


class _Codenames(NamedTuple):
    """The tenant permissions a person held when the decision's first statement read them (`_tenant_codenames`)."""

    user_id: int
    tenant_id: int
    codenames: frozenset[str]


class _ReadAhead(NamedTuple):
    """The answers of `decision_statements_ahead`'s statements for one tenant, read in this request's round trip
    that read its bearer token (`decision_read_ahead`): each gate's rows, then the tenant permissions'."""

    user_id: int
    tenant_id: int
    gates: tuple[Gate, ...]
    rows: list[list[tuple[Any, ...]]]


_READ_AHEAD = "_decision_read_ahead"


def decision_statements_ahead(*, user: Any, tenant: Tenant) -> list[tuple[str, Any]] | None:
    """The statements the first patient-data decision of `user` in `tenant` sends in one round trip (each gate's
    `GateStatement`, then the tenant permissions': `_gates_checked`), for a caller that can send them in a round
    trip it makes anyway before this request's scope is open (the bearer token's, tenants.selectors); None when the
    decision would not ask them together. Call it inside `tenant`'s scope (a gate's statement names the scope's
    tenant). The caller hands their answers, read in that round trip, to `decision_read_ahead`."""
    forms = [_gate_statements.get(gate) for gate in _gates]
    if not _gates or not _is_person(user) or not all(form is not None for form in forms):
        return None
    codenames_statement = _codenames_statement(user, tenant)
    if codenames_statement is None:
        return None
    return [*(form.statement(user, tenant) for form in forms if form is not None), codenames_statement]


def decision_read_ahead(*, actor: Any, tenant_id: int, rows: list[list[tuple[Any, ...]]]) -> None:
    """Give the answers of `decision_statements_ahead`'s statements for `actor` in tenant `tenant_id`, read just
    now in this request, to the first patient-data decision of this request's `actor` object in that tenant: it
    decides on them (the gates' `decide` and the permissions, here as always) instead of reading them again, which
    saves the decision's round trip (docs/BENCHMARKS.md, "h1 branch, session 11"). Used once: the decision after
    it reads afresh, as every decision did before; an actor object lives for one request."""
    actor.__dict__[_READ_AHEAD] = _ReadAhead(actor.pk, tenant_id, tuple(_gates), rows)


def _gates_checked(actor: Any, tenant: Tenant, *, with_codenames: bool) -> _Codenames | None:
    """`gates_check`; with `with_codenames`, when every gate asks its question as one statement (`GateStatement`)
    and the gates are to be asked at all, the actor's tenant permissions are read in the same round trip and
    returned, for the rest of this one decision (None: not read, `_tenant_codenames` reads them). The first such
    decision of a request takes the answers read with its bearer token when they are this tenant's
    (`decision_read_ahead`)."""
    if not _is_person(actor):
        return None
    ahead: _ReadAhead | None = actor.__dict__.pop(_READ_AHEAD, None)
    request_id = current_request_id() or ""
    key = (request_id, tenant.pk)
    passed: set[tuple[str, int]] = actor.__dict__.setdefault("_gates_passed", set())
    if request_id and key in passed:
        return None
    codenames = None
    forms = [_gate_statements.get(gate) for gate in _gates]
    answers: list[list[tuple[Any, ...]]] | None = None
    if with_codenames and ahead is not None and ahead[:3] == (actor.pk, tenant.pk, tuple(_gates)):
        answers = ahead.rows
    else:
        codenames_statement = _codenames_statement(actor, tenant) if with_codenames and _gates else None
        if codenames_statement is not None and all(form is not None for form in forms):
            asked = [form.statement(actor, tenant) for form in forms if form is not None]
            answers = prepared_together([*asked, codenames_statement])
    if answers is not None:
        *gate_rows, held = answers
        for form, rows in zip(forms, gate_rows, strict=True):
            if form is not None:
                form.decide(actor, tenant, rows)
        codenames = _Codenames(actor.pk, tenant.pk, frozenset(codename for (codename,) in held))
    else:
        for gate in _gates:
            gate(actor, tenant)
    if request_id:
        passed.add(key)
    return codenames


# The role -> tenant permission table. Minimum necessary: admins manage people and devices but see no images,
# auditors read the trail for a limited time, radiologists and technologists see and send every study of the
# tenant; referring physicians see only studies that name them or are shared with them (per-study grants).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.TENANT_ADMIN: frozenset(
        {
            "tenants.view_members",
            "tenants.manage_members",
            "tenants.view_audit",
            "tenants.manage_devices",
            "tenants.view_devices",
            "tenants.view_training",
            "tenants.manage_training",
            "tenants.manage_retention",
            "tenants.manage_networks",
            "tenants.manage_export_policy",
        }
    ),
    Role.COMPLIANCE_OFFICER: frozenset(
        {
            "tenants.view_members",
            "tenants.view_audit",
            "tenants.review_break_glass",
            "tenants.view_devices",
            "tenants.view_training",
            "tenants.manage_training",
            "tenants.manage_retention",
        }
    ),
    Role.AUDITOR: frozenset(
        {"tenants.view_members", "tenants.view_audit", "tenants.view_training", "tenants.view_devices"}
    ),
    # export_identified: a disclosure (HIPAA 164.528), so only radiologists, and only through studies they see.
    Role.RADIOLOGIST: frozenset(
        {"tenants.view_studies", "tenants.upload_studies", "tenants.share_studies", "tenants.export_identified"}
    ),
    Role.TECHNOLOGIST: frozenset({"tenants.view_studies", "tenants.upload_studies", "tenants.share_studies"}),
    Role.REFERRING_PHYSICIAN: frozenset(),
}


def role_group_name(tenant: Tenant, role: str) -> str:
    return f"{tenant.slug}:{role}"


def role_groups_install(*, tenant: Tenant) -> None:
    """Create the tenant's role groups and grant each its permissions on the tenant. Idempotent."""
    for role in Role.values:
        group, _ = Group.objects.get_or_create(name=role_group_name(tenant, role))
        wanted = ROLE_PERMISSIONS[role]
        held = {f"tenants.{codename}" for codename in ObjectPermissionChecker(group).get_group_perms(tenant)}
        for perm in wanted - held:
            assign_perm(perm, group, tenant)
        for perm in held - wanted:
            remove_perm(perm, group, tenant)


def membership_groups_sync(*, membership: Membership) -> None:
    """Put the user in exactly the role group their membership gives, or in none once it has ended."""
    tenant = membership.tenant
    prefix = f"{tenant.slug}:"
    user = membership.user
    for group in user.groups.filter(name__startswith=prefix):
        user.groups.remove(group)
    if membership.is_current():
        user.groups.add(Group.objects.get(name=role_group_name(tenant, membership.role)))


# Trusted networks: where a tenant may be reached from. Asked by every door of a tenant (TenantApi, which carries
# DICOMweb too; TenantPageView; the DICOM listener's admission) once the tenant and the caller are known and before
# anything of the tenant is read: a non-member still gets the 404 of a tenant that does not exist, so an address
# outside the ranges cannot learn which tenants exist.


def network_allows(tenant: Tenant, address: str | None) -> bool:
    """True when `address` may reach `tenant`: the tenant lists no trusted network, or one of them holds it. An
    address that is missing or not an IP address is refused whenever the tenant lists any."""
    networks = tenant.network_ranges  # the TrustedNetwork rows' copy on the tenant row: asked on every request
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:10.0.0.1 is 10.0.0.1
    for text in networks:
        network = ipaddress.ip_network(text, strict=False)
        if ip.version == network.version and ip in network:
            return True
    return False


# Membership, the first layer: read before any scope can exist (to open a request's scope, to list a person's
# tenants, to name the role of an audit event's actor), so these two read across tenants (`unscoped_objects`).


def membership_current_get(*, user: Any, tenant: Tenant) -> Membership | None:
    """The user's current membership in `tenant`, or None. Used to open a scope, so it reads unscoped."""
    if not isinstance(user, User) or not user.is_active or not tenant.is_active:
        return None
    # Unscoped, as `Membership.unscoped_objects` reads; prepared once per connection (tenants.db).
    with platform_scope(), prepared_statements(), connection.cursor() as cursor:
        cursor.execute(_membership_statement(), [tenant.pk, user.pk, Membership.Status.ACTIVE])
        row = cursor.fetchone()
    if row is None:
        return None
    return membership_current_of(
        user=user, tenant=tenant, active=Membership.from_db(connection.alias, _membership_columns(), row)
    )


def membership_current_of(*, user: Any, tenant: Tenant, active: Membership | None) -> Membership | None:
    """`membership_current_get`'s answer from `active`, the user's first active membership of `tenant` by id as
    this request has just read it (None: none), e.g. with the request's API token
    (tenants.selectors.api_token_authenticate): the same checks of the user, the tenant and the membership's end."""
    if not isinstance(user, User) or not user.is_active or not tenant.is_active or active is None:
        return None
    if active.user_id != user.pk or active.tenant_id != tenant.pk or active.status != Membership.Status.ACTIVE:
        return None
    active.tenant = tenant  # the caller's row, whose `is_active` was just read
    if not active.is_current():
        return None
    return active


def _membership_columns() -> list[str]:
    return [field.attname for field in Membership._meta.concrete_fields]


def _membership_statement() -> str:
    """`membership_current_get`'s one statement, the active membership (the first by id, as the ORM's `.first()`
    read it), written as SQL: it runs on every request that opens a scope, and compiling the ORM's query cost about
    1.2 ms of CPU each time (docs/BENCHMARKS.md). Names from the model's metadata; every value a parameter."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column or field.attname) for field in Membership._meta.concrete_fields)
    return (
        f"SELECT {columns} FROM {quote(Membership._meta.db_table)}"  # noqa: S608 # nosec B608
        " WHERE tenant_id = %s AND user_id = %s AND status = %s ORDER BY id LIMIT 1"
    )


def tenant_list_for_user(*, user: Any) -> list[tuple[Tenant, Membership]]:
    """The tenants where `user` is a current member, with the membership, by tenant name."""
    if not isinstance(user, User) or not user.is_active:
        return []
    now = timezone.now()
    memberships = (
        Membership.unscoped_objects.filter(
            user=user, status=Membership.Status.ACTIVE, tenant__status=Tenant.Status.ACTIVE
        )
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        .select_related("tenant")
        .order_by("tenant__name")
    )
    return [(m.tenant, m) for m in memberships]


def _tenant_of(obj: Any) -> Tenant | None:
    if isinstance(obj, Tenant):
        return obj
    if isinstance(obj, TenantOwnedModel):
        return obj.tenant
    return None


def _is_person(actor: Any) -> bool:
    return isinstance(actor, User) and actor.is_active and not isinstance(actor, AnonymousUser)


def has_perm(actor: Any, perm: str, obj: Any) -> bool:
    """True when `actor` holds `perm` on `obj`: a tenant permission through their role (on the Tenant), or an
    object permission through the tenant-wide permission that implies it, a guardian grant, or a visibility rule
    of the object's app (see `visible`). For a permission that reaches patient data, a gate's refusal
    (`GateRefused`, a 403 with its reason) is raised instead of any answer."""
    held = None
    if perm in PATIENT_DATA_PERMISSIONS and _is_person(actor):
        tenant = _tenant_of(obj)
        scope = current_tenant_or_none()
        if tenant is not None and scope is not None and scope.pk == tenant.pk:
            held = _gates_checked(actor, tenant, with_codenames=True)
    return _has_perm(actor, perm, obj, held=held)


def _has_perm(actor: Any, perm: str, obj: Any, *, held: _Codenames | None = None) -> bool:
    if not _is_person(actor) or not _credential_allows_perm(actor, perm):
        return False
    tenant = _tenant_of(obj)
    if tenant is None:
        return False
    scope = current_tenant_or_none()
    if scope is not None and scope.pk != tenant.pk:
        return False
    app_label, _, codename = perm.rpartition(".")
    if app_label == "tenants":
        if held is not None and (held.user_id, held.tenant_id) == (actor.pk, tenant.pk):
            return codename in held.codenames
        return codename in _tenant_codenames(actor, tenant)
    if isinstance(obj, Tenant) or scope is None:
        return False
    return _visible(actor, perm, type(obj).objects.filter(pk=obj.pk), held=held).exists()


def _tenant_codenames(actor: Any, tenant: Tenant) -> set[str]:
    """The codenames of the permissions `actor` holds on `tenant`, through their groups (the role groups) or
    granted to them directly: what guardian's get_group_perms and get_user_perms give together (neither has a
    superuser shortcut, unlike has_perm / get_perms), in one statement. Asked on every read of patient data, so
    written as SQL over guardian's generic tables rather than compiled from two querysets each time (2.5 ms of
    CPU for the ORM's two, about 0.3 ms for this; docs/BENCHMARKS.md)."""
    statement = _codenames_statement(actor, tenant)
    if statement is None:  # direct-FK tables: guardian's way
        checker = ObjectPermissionChecker(actor)
        return set(checker.get_group_perms(tenant)) | set(checker.get_user_perms(tenant))
    with prepared_statements(), connection.cursor() as cursor:  # prepared once per connection (tenants.db)
        cursor.execute(*statement)
        return {codename for (codename,) in cursor.fetchall()}


def _codenames_statement(actor: Any, tenant: Tenant) -> tuple[str, dict[str, Any]] | None:
    """`_tenant_codenames`'s statement and its values, or None when guardian keeps the tenant's permissions in
    direct-FK tables (then only guardian's own code reads them)."""
    group_model: Any = get_group_obj_perms_model(tenant)
    user_model: Any = get_user_obj_perms_model(tenant)
    if not (group_model.objects.is_generic() and user_model.objects.is_generic()):
        return None
    params = {"type": ContentType.objects.get_for_model(Tenant).pk, "pk": str(tenant.pk), "user": actor.pk}
    return _codenames_text(group_model._meta.db_table, user_model._meta.db_table), params


@functools.cache
def _codenames_text(group_table: str, user_table: str) -> str:
    quote = connection.ops.quote_name
    groups = User.groups.field
    member_of, permission = quote(groups.m2m_db_table()), quote(Permission._meta.db_table)
    # Table and column names from the models' metadata; every value a parameter.
    return f"""
        SELECT p.codename FROM {permission} p
          JOIN {quote(group_table)} g ON g.permission_id = p.id
          JOIN {member_of} m ON m.{quote(groups.m2m_reverse_name())} = g.group_id
         WHERE p.content_type_id = %(type)s AND g.content_type_id = %(type)s AND g.object_pk = %(pk)s
           AND m.{quote(groups.m2m_column_name())} = %(user)s
        UNION
        SELECT p.codename FROM {permission} p
          JOIN {quote(user_table)} u ON u.permission_id = p.id
         WHERE p.content_type_id = %(type)s AND u.content_type_id = %(type)s AND u.object_pk = %(pk)s
           AND u.user_id = %(user)s"""  # noqa: S608 # nosec B608


def require(actor: Any, perm: str, obj: Any, *, visible_perm: str | None = None) -> None:
    """Raise unless `actor` may do `perm` to `obj`.

    `visible_perm`, when given, is the permission that makes the object visible at all: without it the
    answer is `NotVisible` (404), with it but without `perm` the answer is `Forbidden` (403).
    """
    if has_perm(actor, perm, obj):
        return
    if visible_perm is not None and not has_perm(actor, visible_perm, obj):
        raise NotVisible()
    raise Forbidden()


# Object permissions that a tenant-wide permission implies: a radiologist's `tenants.view_studies` shows every
# study of the tenant without a grant per study.
IMPLIED_BY_TENANT_PERMISSION: dict[str, str] = {
    "studies.view_study": "tenants.view_studies",
}

# How an app widens or narrows, for one model, what guardian grants alone would show (registered by the app's
# AppConfig.ready): `rule(actor, granted)` gets the Q of rows the actor holds a grant on and returns the Q of
# rows the actor may see. The rules live in their apps; the decision is still made only here.
VisibilityRule = Callable[[Any, models.Q], models.Q]
_visibility_rules: dict[type[models.Model], VisibilityRule] = {}


def visibility_rule_register(model: type[models.Model], rule: VisibilityRule) -> None:
    _visibility_rules[model] = rule


def visible(actor: Any, perm: str, qs: models.QuerySet[Any]) -> models.QuerySet[Any]:
    """The rows of the scoped queryset `qs` that `actor` may see under `perm`.

    A tenant permission (`tenants.*`) shows every row of the scope or none. An object permission shows every row
    when the actor holds the tenant permission that implies it; otherwise the rows with a guardian grant, as the
    model's visibility rule amends them (for studies: shares still in force, the studies that name a referring
    physician, break-glass grants).

    For a permission that reaches patient data, the registered gates run first: a refusal is raised
    (`GateRefused`), so no door can mistake it for an empty answer.

    When `actor` may see every row of `qs`, `qs` itself is returned (the same object, unfiltered): a caller that
    would only join the answer back as `pk IN (...)` may then leave the subquery out (studies.selectors.matching).
    """
    return _visible(actor, perm, qs, held=_gates_for(actor, perm))


def _gates_for(actor: Any, perm: str) -> _Codenames | None:
    """For a permission that reaches patient data, the registered gates run (a refusal raised) and, when read
    with them, the actor's tenant permissions for the rest of this decision (`_gates_checked`)."""
    tenant = current_tenant_or_none()
    if perm in PATIENT_DATA_PERMISSIONS and tenant is not None:
        return _gates_checked(actor, tenant, with_codenames=True)
    return None


def visible_unless_every(
    actor: Any, perm: str, rows: Callable[[], models.QuerySet[Any]]
) -> models.QuerySet[Any] | None:
    """`visible(actor, perm, rows())` (the same decision, the gates first), or None when that would be every row of
    `rows()` unfiltered, without calling `rows` then: for a caller that reads every row its own way in that case (a
    search's statement compiled once per shape, studies.selectors.matching), where building the scoped queryset
    only to find it unfiltered cost about a tenth of a cold search's CPU (docs/BENCHMARKS.md, "h1 branch,
    session 11")."""
    held = _gates_for(actor, perm)
    if _every_row(actor, perm, held=held) is True:
        return None
    return _visible(actor, perm, rows(), held=held)


def _every_row(actor: Any, perm: str, *, held: _Codenames | None) -> bool | None:
    """What `_visible` shows of a scoped queryset: every row (True), none (False), or the rows granted one by one
    (None)."""
    if not _is_person(actor) or not _credential_allows_perm(actor, perm):
        return False
    tenant = current_tenant_or_none()
    if tenant is None:
        return False
    if perm.startswith("tenants."):
        return _has_perm(actor, perm, tenant, held=held)
    implied_by = IMPLIED_BY_TENANT_PERMISSION.get(perm)
    if implied_by is not None and _has_perm(actor, implied_by, tenant, held=held):
        return True
    return None


def _visible(
    actor: Any, perm: str, qs: models.QuerySet[Any], *, held: _Codenames | None = None
) -> models.QuerySet[Any]:
    every = _every_row(actor, perm, held=held)
    if every is not None:
        return qs if every else qs.none()
    granted = get_objects_for_user(
        actor, perm, klass=qs, accept_global_perms=False, with_superuser=False, use_groups=True
    )
    condition = models.Q(pk__in=granted.values("pk"))
    rule = _visibility_rules.get(qs.model)
    if rule is not None:
        condition = rule(actor, condition)
    return qs.filter(condition)


def object_grant(*, perm: str, user: Any, obj: models.Model) -> None:
    """Give one person one permission on one object (a share). Services call this inside their transaction."""
    assign_perm(perm, user, obj)


def object_revoke(*, perm: str, user: Any, obj: models.Model) -> None:
    remove_perm(perm, user, obj)


# The clinical roles: their work is images. They may open the study list (what they see in it is still `visible`'s
# answer), and they are the ones who may break the glass in an emergency.
IMAGE_ROLES = frozenset({Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.REFERRING_PHYSICIAN})


def _image_role_in_scope(actor: Any, tenant: Tenant) -> bool:
    scope = current_tenant_or_none()
    if not _is_person(actor) or scope is None or scope.pk != tenant.pk:
        return False
    membership = membership_current_get(user=actor, tenant=tenant)
    return membership is not None and membership.role in IMAGE_ROLES


def may_see_images(actor: Any, tenant: Tenant) -> bool:
    """True when `actor` may look for images in `tenant` at all: the tenant permission `tenants.view_studies`
    (every study), or a current membership in an image role (a referring physician: the studies that name
    them, shares, break-glass). Tenant admins, compliance officers and auditors see no pixels. A gate's refusal
    is raised (`GateRefused`)."""
    if has_perm(actor, "tenants.view_studies", tenant):
        return True
    return _image_role_in_scope(actor, tenant)


# Break-glass (HIPAA 164.312(a)(2)(ii)): in an emergency, a member in an image role may open one object they cannot
# see. The app whose objects can be opened so registers, per model, the permission a grant stands in for (studies:
# `studies.view_study`, in its AppConfig.ready); once granted, the model's visibility rule shows the object.
_break_glass_perms: dict[type[models.Model], str] = {}


def break_glass_register(model: type[models.Model], *, perm: str) -> None:
    _break_glass_perms[model] = perm


def break_glass_require(actor: Any) -> None:
    """Raise `Forbidden` (code `not_a_clinician`) unless `actor` may use break-glass in the current scope's tenant
    at all: a current member in an image role. Checked before the object is known (pages, the start service)."""
    tenant = current_tenant_or_none()
    if tenant is None or not _image_role_in_scope(actor, tenant):
        raise Forbidden("Only clinicians can use emergency access.", code="not_a_clinician")


def break_glass_needed(actor: Any, obj: models.Model) -> bool:
    """True when break-glass would open `obj` to `actor`: they cannot already see it under the permission its
    model registered. A model that registered none cannot be opened by break-glass (`Forbidden`)."""
    perm = _break_glass_perms.get(type(obj))
    if perm is None:
        raise Forbidden("Emergency access does not apply to this.", code="not_break_glass")
    return not has_perm(actor, perm, obj)


def tenant_permissions(actor: Any, tenant: Tenant) -> frozenset[str]:
    """Every tenant-wide permission `actor` holds in `tenant`, for pages that show or hide actions."""
    if not _is_person(actor):
        return frozenset()
    return frozenset(f"tenants.{codename}" for codename in _tenant_codenames(actor, tenant))


# Devices. A DICOM device is not a person: it holds no role and no share. What a device may do on the DICOM
# listener (send with C-STORE; read with C-FIND, C-GET, C-MOVE) is one policy, registered by the devices app in
# its AppConfig.ready, asked here by the listener (studies/net/scp.py) on every C-FIND, C-GET and C-MOVE, and for
# C-STORE at least once per DICOM_DEVICE_RECHECK_SECONDS of an association (so a device revoked while its
# association is open is refused within that bound). With no policy registered, no device may do anything (fail
# closed).
DEVICE_STORE = "dicom.store"
DEVICE_READ = "dicom.read"
DevicePolicy = Callable[[Any, str], bool]
_device_policy: list[DevicePolicy] = []


def device_policy_register(policy: DevicePolicy) -> None:
    _device_policy[:] = [policy]


def device_may(device: Any, action: str) -> bool:
    """True when `device` may do `action` (DEVICE_STORE or DEVICE_READ) in the current tenant scope, by the
    registered device policy; False for anything that is not a device of that tenant."""
    if not _device_policy or current_tenant_or_none() is None or _is_person(device):
        return False
    return _device_policy[0](device, action)


# Device-bound credentials (issue 11). A request made with a device's token acts for a person AND a device: it may
# do a thing only if the person may (every rule above) and the device may too. The request's credential is held
# for its duration by `credential_scope` (opened by TenantApi); the devices app registers, in its
# AppConfig.ready, the gate that answers for a credential it issued. A grant therefore never widens what its
# person may see: the gate is asked only after the person's own answer is yes, and can only say no.
USE_VIEW = "view"
USE_DOWNLOAD = "download"
USE_OFFLINE_CACHE = "offline_cache"
USE_EXPORT_MEDIA = "export_media"
USE_SEND_DICOM = "send_dicom"

# What each permission asks of a device. A permission not listed is refused to every device-bound credential
# (minimum necessary: a phone does not manage members, read the audit trail or upload).
PERMISSION_USES: dict[str, str] = {
    "studies.view_study": USE_VIEW,
    "tenants.view_studies": USE_VIEW,
    "tenants.export_identified": USE_DOWNLOAD,
}

# gate(credential, actor, use) -> True (allowed), False (refused), None (not a credential this gate knows).
CredentialGate = Callable[[Any, Any, str], bool | None]
_credential_gates: list[CredentialGate] = []
_credential: ContextVar[Any] = ContextVar("enclave_credential", default=None)


def credential_gate_register(gate: CredentialGate) -> None:
    if gate not in _credential_gates:
        _credential_gates.append(gate)


@contextmanager
def credential_scope(credential: Any) -> Iterator[None]:
    """The request's credential (a token row, or None for a session) while the request runs."""
    token = _credential.set(credential)
    try:
        yield
    finally:
        _credential.reset(token)


def credential_is_device_bound(credential: Any) -> bool:
    """True when a registered gate knows `credential` (a device's token or enrolment code)."""
    return credential is not None and any(gate(credential, None, "") is not None for gate in _credential_gates)


def credential_allows(actor: Any, use: str) -> bool:
    """False when the request's credential is bound to a device that may not be used for `use`. A credential no
    gate knows (a person's own token, a session) is not narrowed."""
    credential = _credential.get()
    if credential is None:
        return True
    for gate in _credential_gates:
        answer = gate(credential, actor, use)
        if answer is not None:
            return answer
    return True


def credential_use_require(actor: Any, use: str) -> None:
    """Raise `Forbidden` (code `device_not_granted`) unless the request's device may be used for `use`."""
    if not credential_allows(actor, use):
        raise Forbidden(f"This device has no “{use}” grant.", code="device_not_granted")


def _credential_allows_perm(actor: Any, perm: str) -> bool:
    # A permission with no listed use asks for "", which no device holds.
    return credential_allows(actor, PERMISSION_USES.get(perm, ""))
