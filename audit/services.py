"""The one function that writes audit events."""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from auditlog.models import LogEntry
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, connection, connections, models, router, transaction
from django.db.models import sql
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit import context as audit_context
from audit import signing, worm
from audit.events import EventType, Outcome
from audit.models import (
    AuditChain,
    AuditDigest,
    AuditEvent,
    ChangeSeal,
    SecurityAlert,
    SyslogCursor,
    WormCopy,
    canonical_json,
)
from studies.storage.durable import stored_file_sync
from tenants import access
from tenants.access import membership_current_get, tenant_list_for_user
from tenants.db.base import prepared_statements
from tenants.models import Tenant, TenantOwnedModel, User
from tenants.scoping import current_tenant_or_none, platform_scope, tenant_scope

logger = logging.getLogger(__name__)


def participant(obj: Any, *, role: str = "", name: str = "", detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ParticipantObject entry for a model instance (or a ready dict)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, User):
        entry: dict[str, Any] = {"type": "user", "id": str(obj.subject_uuid), "name": name or obj.username}
    else:
        object_id = getattr(obj, "public_id", None) or obj.pk
        entry = {"type": obj._meta.label_lower, "id": str(object_id), "name": name or str(obj)}
    if role:
        entry["role"] = role
    if detail:
        entry["detail"] = dict(detail)
    return entry


def _writer_scope(tenant: Tenant | None) -> AbstractContextManager[Any]:
    """The scope the audit writer writes in: the tenant's whose chain it appends to (whatever scope called it, or
    none: a platform job recording a tenant's event), or the platform's for the platform chains (no tenant). The
    database's row-level security (tenants.db) lets the chain's rows through, and only those."""
    return tenant_scope(tenant) if tenant is not None else platform_scope()


def _chain_locked(tenant: Tenant | None) -> AuditChain:
    """The chain's head row, locked until the transaction ends (a per-tenant lock)."""
    key = AuditChain.key_for(tenant)
    head = _chain_head_locked(key)
    if head is not None:
        return head
    try:
        with transaction.atomic():
            AuditChain.objects.create(key=key, tenant=tenant)
    except IntegrityError:
        pass  # another writer created it first
    return AuditChain.objects.select_for_update().get(key=key)


def _chain_head_locked(key: str) -> AuditChain | None:
    """The chain's head row by key, `SELECT ... FOR UPDATE`, or None: what `select_for_update().get()` reads,
    written as one parameterised statement because every audited read takes it (the ORM spent about 1 ms of CPU
    compiling it each time; docs/BENCHMARKS.md). Like the ORM, it refuses to run outside an `atomic` block, where
    the lock would end with the statement."""
    if not connection.in_atomic_block:
        raise transaction.TransactionManagementError("The audit chain's head is locked only inside a transaction.")
    with prepared_statements(), connection.cursor() as cursor:  # prepared once per connection (tenants.db)
        cursor.execute(_CHAIN_HEAD_STATEMENT, [key])
        row = cursor.fetchone()
    return None if row is None else AuditChain.from_db(connection.alias, _CHAIN_HEAD_COLUMNS, row)


def _chain_head_statement() -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column or field.attname) for field in AuditChain._meta.concrete_fields)
    return f"SELECT {columns} FROM {quote(AuditChain._meta.db_table)} WHERE {quote('key')} = %s FOR UPDATE"  # noqa: S608 # nosec B608


_CHAIN_HEAD_STATEMENT = _chain_head_statement()
_CHAIN_HEAD_COLUMNS = [field.attname for field in AuditChain._meta.concrete_fields]


@functools.lru_cache(maxsize=1024)
def _normalized_address(address: str | None) -> str | None:
    """`address` as PostgreSQL's inet writes it back, or None for no address or not one: parsed once per address
    and process (a pure function of its text; every event of a request's caller names the same one)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    # An IPv4-mapped IPv6 address (a dual-stack listener's ::ffff:10.0.0.1) as its IPv4 address: Python writes it
    # ::ffff:a00:1 and PostgreSQL reads it back as ::ffff:10.0.0.1, so the hashed and the stored text differed
    # and audit_verify would have taken the row for an edited one.
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def audit_event_record(
    *,
    event: EventType,
    actor: Any = None,
    tenant: Tenant | None = None,
    target: Any = None,
    participants: Iterable[Any] = (),
    outcome: int = Outcome.SUCCESS,
    outcome_description: str = "",
    actor_role: str = "",
    actor_username: str = "",
    source_address: str | None = None,
    system_principal: str = "",
    extra: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to its tenant's hash chain and return it.

    Contract: `tenant` defaults to the target's tenant, then the active scope; with none, the event goes to the
    platform chain. Request id, source address and system principal default to the current audit context.
    Runs inside the caller's transaction, so a change and its audit row commit or roll back together. The
    chain head is locked for the rest of that transaction: keep the transaction short. A caller outside any
    transaction (a read's event: a search, a retrieval) gets a transaction of its own, committed before this
    returns; a failed write raises and leaves nothing.
    """
    if tenant is None and isinstance(target, TenantOwnedModel):
        tenant = target.tenant
    if tenant is None and isinstance(target, Tenant):
        tenant = target
    if tenant is None:
        tenant = current_tenant_or_none()
    ctx = audit_context.current()
    spec = event.spec
    user = actor if isinstance(actor, User) and actor.pk is not None else None
    if user is not None and not actor_role and tenant is not None:
        membership = membership_current_get(user=user, tenant=tenant)
        actor_role = membership.role if membership is not None else ""

    # A plain dict (what read_participants builds, hundreds for a search) copied as `participant` copies a mapping.
    entries = [dict(p) if type(p) is dict else participant(p) for p in participants]
    target_type = target_id = ""
    if target is not None:
        target_entry = participant(target)
        target_type, target_id = target_entry["type"], target_entry["id"]
        entries.insert(0, target_entry)

    details: dict[str, Any] = {
        "tenant": tenant, "event": event, "spec": spec, "ctx": ctx, "user": user, "actor_username": actor_username,
        "actor_role": actor_role, "outcome": outcome, "outcome_description": outcome_description,
        "system_principal": system_principal, "source_address": source_address, "target_type": target_type,
        "target_id": target_id, "entries": entries, "extra": extra,
    }  # fmt: skip
    with _writer_scope(tenant):
        if connection.get_autocommit() and not connection.in_atomic_block:
            appended = _event_append_alone(**details)
            if appended is not None:
                return appended
        with transaction.atomic():
            return _event_append(**details)


def _event_append_alone(**details: Any) -> AuditEvent | None:
    """`_event_append` for a caller outside any transaction, in one statement and one round trip
    (`_append_statement`): the head's lock, the event's sequence and hash, the INSERT and the head's move, run by
    PostgreSQL as the implicit transaction of that statement (with the scope's setting in front of it, tenants.db),
    committed when it returns; any failure leaves nothing and raises (the read then sends nothing). The hash is
    SHA-256 over the same bytes as `AuditEvent.compute_hash`: the previous hash, a newline, and the canonical text
    written here around the sequence, which only the locked head knows (`canonical_around_sequence`); this process
    checks it again on the answer. None, with nothing written, when the chain has no head yet (`_chain_locked` then
    makes it inside an `atomic` block) or the event falls within MONTH_EDGE of the turn of a month (its time is then
    taken under the lock, in that block)."""
    tenant = details["tenant"]
    row = _event_row(**details, chain=None)
    if _near_month_edge(row.occurred_at):
        return None  # written in an `atomic` block, its time taken under the chain's lock (MONTH_EDGE)
    participants_json = canonical_json(details["entries"])
    before, after = row.canonical_around_sequence(participants_json)
    insert_params = _participants_param_written(_APPENDED_FIELDS, _append_values(row), participants_json)
    key = AuditChain.key_for(tenant)
    found = _append_sent(row, _append_statement(), [key, "\n" + before, after, *insert_params])
    if found is None or found[0] is None:
        return None  # no head: nothing was written
    row.pk, row.chain_id, row.sequence, row.prev_hash, row.hash = found[:5]
    row._state.adding = False
    row._state.db = connection.alias
    canonical = (before + str(row.sequence) + after).encode()
    if hashlib.sha256(row.prev_hash.encode() + b"\n" + canonical).hexdigest() != row.hash:
        # Cannot happen while the statement hashes what this process writes; if it ever did, the read stops here.
        raise RuntimeError(f"The audit chain {key} was advanced with a hash this process does not make.")
    return row


# The one statement takes the event's time before the chain's lock, where an `atomic` writer takes it under the lock:
# two writers racing across the turn of a month could then store the later sequence with the earlier month, and that
# month's WORM segment (`audit_segment_body`: a month's events by occurred_at, in sequence order) would hold an event
# whose predecessor is in the next month's, a break in its chain to an outside auditor. So within this much of the
# turn of a month an event is written the other way (two round trips more, a few minutes a month); a writer whose
# lock wait outlasts it would have to wait this long for the lock.
MONTH_EDGE = timedelta(minutes=5)


def _near_month_edge(at: datetime) -> bool:
    """Whether `at` is within MONTH_EDGE of the turn of a month (UTC, as the segments are cut)."""
    at = at.astimezone(UTC)
    start, end = _month_bounds(date(at.year, at.month, 1))
    return at - start < MONTH_EDGE or end - at < MONTH_EDGE


def _append_sent(row: AuditEvent, statement: str, params: list[Any]) -> tuple[Any, ...] | None:
    """Run the one statement that appends `row` to its chain (either writer's), prepared once per connection
    (tenants.db), and return its one row."""
    with prepared_statements(), connection.cursor() as cursor:
        cursor.execute(statement, params)
        found: tuple[Any, ...] | None = cursor.fetchone()
    return found


# The columns PostgreSQL fills from the locked head in `_append_statement`; every other column is a parameter.
_FROM_HEAD = {"chain_id": '"id"', "sequence": '"sequence"', "prev_hash": '"last_hash"', "hash": '"hash"'}


def _append_values(row: AuditEvent) -> list[Any]:
    """The INSERT's values of `row` but those `_FROM_HEAD` fills, converted as Django's insert compiler converts
    them (`_insert_compiled`)."""
    _, params = _insert_compiled(row)
    return [value for field, value in zip(_INSERTED_FIELDS, params, strict=True) if field.attname not in _FROM_HEAD]


_APPENDED_FIELDS = [field for field in AuditEvent._meta.local_concrete_fields if not field.primary_key]
_APPENDED_FIELDS = [field for field in _APPENDED_FIELDS if field.attname not in _FROM_HEAD]
_append_text: dict[str, str] = {}


def _append_statement() -> str:
    """The one statement of `_event_append_alone`: lock the chain's head by key, take the next sequence and the
    SHA-256 of (previous hash, newline, the canonical text around the sequence), INSERT the event and move the head
    to it. Its parameters: the key, the text before the sequence (with the newline in front), the text after it,
    then the values of `_APPENDED_FIELDS`, each cast to its column's type without a length (so that a value too
    long for its column fails as an INSERT's value would). It answers one row: the event's id, chain, sequence,
    previous hash and hash, all NULL when there is no head (nothing written); it fails by itself (a division by
    the rows written) when there is a head but the event was not stored or the head not moved, so that no event is
    ever committed without its head nor a head without its event."""
    text = _append_text.get(connection.alias)
    if text is not None:
        return text
    quote = connection.ops.quote_name
    head_table, event_table = quote(AuditChain._meta.db_table), quote(AuditEvent._meta.db_table)
    columns = ", ".join(quote(field.column or field.attname) for field in _INSERTED_FIELDS)
    values = ", ".join(
        _FROM_HEAD[field.attname]
        if field.attname in _FROM_HEAD
        else "%s::" + _TYPE_LENGTH.sub("", field.db_type(connection) or "")
        for field in _INSERTED_FIELDS
    )
    text = (
        f'WITH head AS (SELECT "id", "last_sequence" + 1 AS "sequence", "last_hash" FROM {head_table} '  # noqa: S608 # nosec B608
        'WHERE "key" = %s FOR UPDATE), '
        'hashed AS (SELECT "id", "sequence", "last_hash", '
        """encode(sha256(convert_to("last_hash" || %s || "sequence"::text || %s, 'UTF8')), 'hex') AS "hash" """
        "FROM head), "
        f"appended AS (INSERT INTO {event_table} ({columns}) SELECT {values} FROM hashed "
        'RETURNING "id", "chain_id", "sequence", "prev_hash", "hash"), '
        f'advanced AS (UPDATE {head_table} SET "last_sequence" = hashed."sequence", "last_hash" = hashed."hash" '
        f'FROM hashed WHERE {head_table}."id" = hashed."id" RETURNING 1) '
        'SELECT a."id", a."chain_id", a."sequence", a."prev_hash", a."hash", '
        "CASE WHEN EXISTS (SELECT 1 FROM head) "
        "THEN 1 / ((SELECT count(*) FROM appended) * (SELECT count(*) FROM advanced))::integer END "
        "FROM (SELECT 1) AS one LEFT JOIN appended AS a ON true"
    )
    _append_text[connection.alias] = text
    return text


_TYPE_LENGTH = re.compile(r"\(.*\)")


def _event_append(
    *, tenant: Tenant | None, event: EventType, spec: Any, ctx: Any, user: User | None, actor_username: str,
    actor_role: str, outcome: int, outcome_description: str, system_principal: str, source_address: str | None,
    target_type: str, target_id: str, entries: list[dict[str, Any]], extra: Mapping[str, Any] | None,
    chain: AuditChain | None = None,
) -> AuditEvent:  # fmt: skip
    """Append the event to `chain` (its head already locked), or to the tenant's chain locked here."""
    chain = chain if chain is not None else _chain_locked(tenant)
    row = _event_row(
        tenant=tenant, event=event, spec=spec, ctx=ctx, user=user, actor_username=actor_username,
        actor_role=actor_role, outcome=outcome, outcome_description=outcome_description,
        system_principal=system_principal, source_address=source_address, target_type=target_type,
        target_id=target_id, entries=entries, extra=extra, chain=chain,
    )  # fmt: skip
    # The participants written as JSON once: for the hash and, as they are, for the column.
    participants_json = canonical_json(entries)
    row.hash = row.compute_hash(chain.last_hash, participants_json)
    _event_insert_and_advance(row, chain, participants_json)
    return row


def _event_row(
    *, tenant: Tenant | None, event: EventType, spec: Any, ctx: Any, user: User | None, actor_username: str,
    actor_role: str, outcome: int, outcome_description: str, system_principal: str, source_address: str | None,
    target_type: str, target_id: str, entries: list[dict[str, Any]], extra: Mapping[str, Any] | None,
    chain: AuditChain | None,
) -> AuditEvent:  # fmt: skip
    """The event's row, not saved: on `chain` (its sequence and previous hash taken from it), or with neither
    chain nor hashes, and sequence 0, when `chain` is None (`_event_append_alone`: PostgreSQL fills them in).

    Made as `AuditEvent(chain=..., tenant=..., ...)` makes it, the same values and the same related objects at
    hand, but through the model's positional constructor (every column's value in order, as the ORM makes a row it
    read), which does not look each keyword up field by field nor ask the database router once per related object:
    a third of the CPU (docs/BENCHMARKS.md, "h1 branch, session 9")."""
    given = {
        "chain_id": None if chain is None else chain.pk,
        "tenant_id": None if tenant is None else tenant.pk,
        "sequence": chain.last_sequence + 1 if chain is not None else 0,  # 0: PostgreSQL takes it under the lock
        "occurred_at": timezone.now(),
        "event_type": event.value,
        "event_id": spec.event_id.value,
        "event_id_display": spec.event_id.display,
        "event_type_code": spec.event_type.value if spec.event_type else "",
        "event_type_display": spec.event_type.display if spec.event_type else "",
        "action": spec.action,
        "outcome": outcome,
        "outcome_description": outcome_description[:300],
        "actor_user_id": None if user is None else user.pk,
        "actor_username": (user.username if user is not None else actor_username)[:150],
        "actor_role": actor_role,
        "system_principal": system_principal or ctx.system_principal,
        "source_address": _normalized_address(source_address or ctx.source_address),
        "target_type": target_type,
        "target_id": target_id,
        "participants": entries,
        "request_id": ctx.request_id,
        "extra": dict(extra or {}),
        "prev_hash": chain.last_hash if chain is not None else "",
    }
    values = [given[name] if name in given else field.get_default() for name, field in _ROW_FIELDS]
    row = AuditEvent(*values)  # type: ignore[misc]  # django-stubs type the first positional as the id alone
    # What assigning each related object by keyword leaves behind: the object at hand (None included), and the
    # row's database as the router names it for the first object given.
    related = (chain, tenant, user)
    for field, obj in zip(_ROW_RELATED, related, strict=True):
        field.set_cached_value(row, obj)
    first = next((obj for obj in related if obj is not None), None)
    if first is not None:
        row._state.db = router.db_for_write(AuditEvent, instance=first)
    return row


_ROW_FIELDS = [(field.attname, field) for field in AuditEvent._meta.concrete_fields]
_ROW_RELATED: list[Any] = [AuditEvent._meta.get_field(name) for name in ("chain", "tenant", "actor_user")]


def _event_insert_and_advance(row: AuditEvent, chain: AuditChain, participants_json: str | None = None) -> None:
    """INSERT the event and move the chain's head to it in one statement (a data-modifying CTE), under the lock
    `_chain_locked` took: one round trip instead of two. The INSERT is the one `row.save(force_insert=True)`
    would send (Django's own insert compiler: the same columns, values and conversions; its text compiled once per
    process, `_insert_compiled`); neither model has save signals (both are outside django-auditlog,
    portal.settings)."""
    fields = _INSERTED_FIELDS
    insert_sql, insert_params = _insert_compiled(row)
    if participants_json is not None:
        insert_params = _participants_param_written(fields, list(insert_params), participants_json)
    quote = connection.ops.quote_name
    head, pk = quote(AuditChain._meta.db_table), quote("id")
    # Names from the models' metadata and Django's compiled INSERT; every value a parameter. A head that is gone or
    # hidden, or an event not stored, makes the statement itself fail (a division by the zero rows it wrote), not
    # only this function: the statement is its own transaction when the caller has none, and must never commit an
    # event without its head, nor a head without its event.
    statement = (
        f"WITH appended AS ({insert_sql} RETURNING {pk}), "  # noqa: S608 # nosec B608
        f'advanced AS (UPDATE {head} SET "last_sequence" = %s, "last_hash" = %s WHERE "id" = %s RETURNING 1) '
        f"SELECT (SELECT {pk} FROM appended), "
        "1 / ((SELECT count(*) FROM appended) * (SELECT count(*) FROM advanced))::integer"
    )
    found = _append_sent(row, statement, [*insert_params, row.sequence, row.hash, chain.pk])
    if found is None or found[0] is None:  # the head row is gone or hidden: nothing may have been appended
        raise AuditChain.DoesNotExist(f"The audit chain {chain.key} could not be advanced.")
    row.pk = found[0]
    row._state.adding = False
    row._state.db = connection.alias
    chain.last_sequence = row.sequence
    chain.last_hash = row.hash


_INSERTED_FIELDS = [field for field in AuditEvent._meta.local_concrete_fields if not field.primary_key]
_insert_text: dict[str, str] = {}


def _insert_compiled(row: AuditEvent) -> tuple[str, list[Any]]:
    """The INSERT of `row` as Django's insert compiler writes it: its text, compiled by Django the first time in
    this process for this database and kept when each of its placeholders is a plain `%s` (one per field), and its
    values converted field by field as the compiler converts them (`pre_save`, then `get_db_prep_save`). The
    compilation was about 0.2 ms of CPU per event, the conversions a third of that (docs/BENCHMARKS.md)."""
    alias = connection.alias
    text = _insert_text.get(alias)
    values = [field.pre_save(row, True) for field in _INSERTED_FIELDS]
    if text is None or any(hasattr(value, "resolve_expression") for value in values):
        query = sql.InsertQuery(AuditEvent)
        query.insert_values(_INSERTED_FIELDS, [row])
        [(text, params)] = query.get_compiler(using=alias).as_sql()
        placeholders = text.rpartition(" VALUES ")[2]
        if placeholders == "(" + ", ".join(["%s"] * len(_INSERTED_FIELDS)) + ")":
            _insert_text[alias] = text
        return text, list(params)
    # The connection itself, as the compiler passes it, not `django.db.connection`: that proxy looks the
    # connection up again (a thread-local) at each of the dozen `connection.ops` the conversions read.
    wrapper = connections[alias]
    return text, [
        field.get_db_prep_save(value, connection=wrapper) for field, value in zip(_INSERTED_FIELDS, values, strict=True)
    ]


_PARTICIPANTS = AuditEvent._meta.get_field("participants")


def _participants_param_written(fields: list[Any], params: list[Any], participants_json: str) -> list[Any]:
    """The INSERT's parameters with the participants' value sent as the JSON text already written for the hash,
    not serialised again by the driver. The compiled INSERT has one parameter per field, in `fields`' order; the
    participants' one is psycopg's Jsonb wrapper of the list (the JSONField's adaptation), given the text here.
    Should a later Django compile it otherwise, the parameters are left as they are: the driver then writes the
    same list again, which stores the same JSON (only the saving is lost, never an event)."""
    index = fields.index(_PARTICIPANTS)
    if len(params) == len(fields) and isinstance(params[index], Jsonb):
        params[index] = Jsonb(params[index].obj, dumps=lambda _obj: participants_json)
    return params


def audit_chain_create(*, tenant: Tenant) -> AuditChain:
    """Create a tenant's chain head. Idempotent."""
    with _writer_scope(tenant):
        chain, _ = AuditChain.objects.get_or_create(key=AuditChain.key_for(tenant), defaults={"tenant": tenant})
    return chain


def access_denied_record(*, actor: Any, where: str, method: str, code: str = "", reason: str = "") -> AuditEvent:
    """A member was refused a function of their tenant (a 403): on the trail for intrusion review. `code` and
    `reason` say why, when a gate refused (`training_expired` and the course)."""
    extra = {"where": where, "method": method}
    if code:
        extra["code"] = code
    return audit_event_record(
        event=EventType.ACCESS_DENIED,
        actor=actor,
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=reason or "permission denied",
        extra=extra,
    )


def not_found_record(*, actor: Any, where: str, method: str, identifier: str) -> AuditEvent:
    """A member of the current tenant asked for an object that is not there, or not theirs to see (a 404): on the
    trail so that guessing identifiers shows (the `not_found_burst` rule of audit.rules). `identifier` is what the
    URL named (the route's arguments), never a query string."""
    return audit_event_record(
        event=EventType.OBJECT_NOT_FOUND,
        actor=actor,
        outcome=Outcome.MINOR_FAILURE,
        outcome_description="not found",
        extra={"where": where, "method": method, "identifier": identifier[:200]},
    )


def auth_event_record(
    *,
    event: EventType,
    user: Any = None,
    username: str = "",
    outcome: int = Outcome.SUCCESS,
    outcome_description: str = "",
    system_principal: str = "",
    extra: Mapping[str, Any] | None = None,
) -> list[AuditEvent]:
    """A sign-in, sign-out or lockout: recorded in the chain of every tenant where the person is a current
    member, so each tenant's reviewers see their own people; with no such tenant (an unknown user name, a
    platform operator), in the platform chain."""
    tenants = [tenant for tenant, _ in tenant_list_for_user(user=user)] if isinstance(user, User) else []
    common: dict[str, Any] = {
        "event": event,
        "actor": user,
        "actor_username": username,
        "outcome": outcome,
        "outcome_description": outcome_description,
        "system_principal": system_principal,
        "extra": extra,
    }
    if not tenants:
        return [audit_event_record(tenant=None, **common)]
    return [audit_event_record(tenant=tenant, **common) for tenant in tenants]


@transaction.atomic
def security_alert_raise(
    *,
    kind: str,
    summary: str,
    event: EventType,
    severity: str = "high",
    actor: Any = None,
    tenant: Tenant | None = None,
    target: Any = None,
    participants: Iterable[Any] = (),
    extra: Mapping[str, Any] | None = None,
    outcome: int = Outcome.SERIOUS_FAILURE,
    subject: str = "",
    evidence: Iterable[str] = (),
) -> SecurityAlert:
    """Record the audit event and open a SecurityAlert pointing at it, in one transaction. `summary` is shown to
    reviewers: never put patient data in it (the event's participants carry what is needed)."""
    row = audit_event_record(
        event=event, actor=actor, tenant=tenant, target=target, participants=participants,
        outcome=outcome, outcome_description=summary, extra=extra,
    )  # fmt: skip
    alert = SecurityAlert(
        tenant=row.tenant, kind=kind, summary=summary[:300], severity=severity, event=row, subject=subject[:150],
        evidence=list(evidence),
    )  # fmt: skip
    with _writer_scope(row.tenant):
        alert.save()
        for hook in _alert_hooks:
            hook(alert)
    return alert


_alert_hooks: list[Callable[[SecurityAlert], None]] = []


def security_alert_hook_register(hook: Callable[[SecurityAlert], None]) -> None:
    """Call `hook(alert)` for each alert raised, inside its transaction (the e-mail of audit.incidents, queued on
    commit). Registered from AppConfig.ready(): the audit writer stays below the domain."""
    if hook not in _alert_hooks:
        _alert_hooks.append(hook)


# Seals over django-auditlog's entries
# ------------------------------------------------------------------------------

SEAL_BATCH = 1000


def _change_chain_locked(key: str) -> AuditChain:
    try:
        return AuditChain.objects.select_for_update().get(key=key)
    except AuditChain.DoesNotExist:
        pass
    try:
        with transaction.atomic():
            AuditChain.objects.create(key=key, tenant=None)
    except IntegrityError:
        pass
    return AuditChain.objects.select_for_update().get(key=key)


def _entries_of(tenant_id: int | None) -> models.QuerySet[LogEntry]:
    if tenant_id is None:
        return LogEntry.objects.filter(
            models.Q(additional_data__isnull=True) | models.Q(additional_data__tenant_id__isnull=True)
        )
    return LogEntry.objects.filter(additional_data__tenant_id=tenant_id)


def audit_changes_unsealed(
    *, tenant_id: int | None, entry_ids: Iterable[int] | None = None
) -> models.QuerySet[LogEntry]:
    """The tenant's (None: the platform's) django-auditlog entries that no seal covers yet, oldest first: among
    `entry_ids` when given (what one transaction wrote), else among the entries of the last
    AUDIT_SEAL_LOOKBACK_SECONDS (the sweep: bounded, so its cost does not grow with the table)."""
    sealed = ChangeSeal.objects.filter(entry_id=models.OuterRef("pk"))
    entries = _entries_of(tenant_id)
    if entry_ids is not None:
        entries = entries.filter(pk__in=list(entry_ids))
    else:
        entries = entries.filter(
            timestamp__gte=timezone.now() - timedelta(seconds=settings.AUDIT_SEAL_LOOKBACK_SECONDS)
        )
    return entries.filter(~models.Exists(sealed)).order_by("pk")


def audit_changes_seal(*, tenant_id: int | None, entry_ids: Iterable[int] | None = None) -> int:
    """Append a seal for each unsealed django-auditlog entry of one tenant (None: the platform), in entry order,
    to the tenant's change chain; return how many. `entry_ids`: only those entries (the on-commit path); else the
    recent ones (the sweep). System job (no actor). Idempotent and safe to run concurrently: the chain head is
    locked per batch, and an entry is sealed once (`entry_id` is unique)."""
    with platform_scope():  # the change chains are the platform's rows (no tenant): see ChangeSeal
        return _changes_seal(tenant_id=tenant_id, entry_ids=entry_ids)


def _changes_seal(*, tenant_id: int | None, entry_ids: Iterable[int] | None) -> int:
    key = ChangeSeal.chain_key(tenant_id)
    ids = list(entry_ids) if entry_ids is not None else None
    total = 0
    while True:
        with transaction.atomic():
            chain = _change_chain_locked(key)
            entries = list(audit_changes_unsealed(tenant_id=tenant_id, entry_ids=ids)[:SEAL_BATCH])
            seals = []
            for entry in entries:
                sequence = chain.last_sequence + 1
                digest = ChangeSeal.compute_hash(chain.last_hash, entry)
                seals.append(ChangeSeal(chain=chain, sequence=sequence, entry_id=entry.pk, prev_hash=chain.last_hash,
                                        hash=digest))  # fmt: skip
                chain.last_sequence, chain.last_hash = sequence, digest
            ChangeSeal.objects.bulk_create(seals)
            chain.save(update_fields=["last_sequence", "last_hash"])
        total += len(entries)
        if len(entries) < SEAL_BATCH:
            return total


def audit_changes_seal_all() -> int:
    """Seal every tenant's recent unsealed entries (the beat job's sweep behind the on-commit sealing)."""
    tenant_ids = set(Tenant.objects.values_list("pk", flat=True))
    return sum(audit_changes_seal(tenant_id=tenant_id) for tenant_id in [*sorted(tenant_ids), None])


def logentry_seal_on_commit(sender: Any, instance: LogEntry, created: bool, **kwargs: Any) -> None:
    """post_save of LogEntry: seal the entries this transaction wrote once it has committed (at once in
    autocommit). One sealing per tenant per transaction, over exactly its entries; a rolled-back transaction
    seals nothing."""
    if not created:
        return
    data = instance.additional_data if isinstance(instance.additional_data, dict) else {}
    tenant_id = data.get("tenant_id")
    for _, queued, *_ in connection.run_on_commit:
        if getattr(queued, "audit_seal_tenant", None) == (tenant_id,):
            queued.audit_seal_entries.append(instance.pk)  # type: ignore[attr-defined]
            return
    entry_ids = [instance.pk]

    def seal() -> None:
        audit_changes_seal(tenant_id=tenant_id, entry_ids=entry_ids)

    seal.audit_seal_tenant = (tenant_id,)  # type: ignore[attr-defined]
    seal.audit_seal_entries = entry_ids  # type: ignore[attr-defined]
    transaction.on_commit(seal)


# Security alerts: the rules over the event stream, and their handling
# ------------------------------------------------------------------------------

# Handling an alert is a compliance officer's review of a security event: the permission that already marks that
# review (break-glass sign-off). Auditors and admins read alerts (`tenants.view_audit`) but do not handle them.
ALERT_HANDLE_PERM = "tenants.review_break_glass"
ALERT_HANDLE_STATES = (SecurityAlert.Status.ACKNOWLEDGED, SecurityAlert.Status.ESCALATED, SecurityAlert.Status.CLOSED)


@transaction.atomic
def security_alert_handle(*, actor: Any, alert: SecurityAlert, state: str, note: str = "") -> SecurityAlert:
    """Acknowledge, escalate or close an alert of the current tenant with a note (`ALERT_HANDLE_PERM`; a note is
    required to escalate or close). Records who and when on the alert and SECURITY_ALERT_HANDLED on the trail.
    Handling a closed alert is refused (a closed alert stays closed)."""
    access.require(actor, ALERT_HANDLE_PERM, alert.tenant, visible_perm="tenants.view_audit")
    note = (note or "").strip()
    if state not in ALERT_HANDLE_STATES:
        raise ValidationError({"state": "Choose acknowledge, escalate or close."})
    if state != SecurityAlert.Status.ACKNOWLEDGED and not note:
        raise ValidationError({"note": "Say why: a note is required to escalate or close an alert."})
    if len(note) > 2000:
        raise ValidationError({"note": "At most 2000 characters."})
    locked = SecurityAlert.objects.select_for_update().get(pk=alert.pk)
    if locked.status == SecurityAlert.Status.CLOSED:
        raise ValidationError({"state": "This alert is closed."})
    previous = locked.status
    locked.status, locked.note = state, note
    locked.acknowledged_by, locked.acknowledged_at = actor, timezone.now()
    locked.save(update_fields=["status", "note", "acknowledged_by", "acknowledged_at"])
    audit_event_record(
        event=EventType.SECURITY_ALERT_HANDLED,
        actor=actor,
        target={"type": "security_alert", "id": str(locked.public_id), "name": locked.kind},
        extra={"from": previous, "to": state, "note": note},
    )
    return locked


# Signed digests of the chain heads
# ------------------------------------------------------------------------------


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_digests_sign(*, day: Any = None) -> int:
    """Sign the head of every chain (events and change seals) for `day` (default today, UTC) with the Ed25519 key
    of AUDIT_SIGNING_KEY: one digest per chain and day (a rerun the same day signs nothing new), each naming the
    chain's previous digest's signature. Each digest is a row and a JSON file in the replica store
    (`audit-digests/t<tenant>/<events|changes>/<day>.json`: the signed document, the signature and the public
    key), written in one transaction with the row (a failed file write leaves no row). System job; the key comes
    from the environment and is never stored (none set: nothing is signed, and audit_verify says so). Returns
    how many digests were written."""
    key = signing.signing_key()
    if key is None:
        logger.warning("AUDIT_SIGNING_KEY is not set: no audit digest signed")
        return 0
    public = key.public_key()
    public_text, key_id = base64.b64encode(signing.public_key_raw(public)).decode(), signing.key_id(public)
    store = storages["replica"]
    day = day or timezone.now().astimezone(UTC).date()
    written = 0
    for chain in AuditChain.objects.order_by("pk"):
        if chain.last_sequence == 0 or AuditDigest.objects.filter(chain=chain, day=day).exists():
            continue
        previous = AuditDigest.objects.filter(chain=chain).order_by("-day", "-pk").first()
        digest = AuditDigest(
            chain=chain, day=day, last_sequence=chain.last_sequence, last_hash=chain.last_hash,
            algorithm=AuditDigest.ED25519, key_id=key_id, prev_signature=previous.signature if previous else "",
            path=AuditDigest.path_for(chain, day),
        )  # fmt: skip
        document = digest.document(chain)
        digest.signature = signing.sign(key, AuditDigest.message_of(document))
        body = json.dumps({**document, "signature": digest.signature, "public_key": public_text}, indent=2)
        try:
            with transaction.atomic():
                digest.save(force_insert=True)
                if store.exists(digest.path):
                    store.delete(digest.path)  # left by a run whose row did not commit: no row names it
                store.save(digest.path, ContentFile(body.encode()))
                stored_file_sync(store, digest.path)  # on disk before its row commits (studies.storage.durable)
        except IntegrityError:
            continue  # a concurrent run signed it
        written += 1
    return written


# The WORM store: signed digests and sealed months of events, locked in compliance mode (audit.worm)
# ------------------------------------------------------------------------------

WORM_SEAL_GRACE = timedelta(hours=1)  # a month is sealed once it ended this long ago (late commits land first)


def _worm_store() -> worm.ObjectLockS3Storage | None:
    return storages[worm.STORE] if worm.STORE in settings.STORAGES else None  # type: ignore[return-value]


def _month_bounds(month: date) -> tuple[Any, Any]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    year, number = (month.year + 1, 1) if month.month == 12 else (month.year, month.month + 1)
    return start, datetime(year, number, 1, tzinfo=UTC)


def audit_segment_body(*, chain: AuditChain, month: date, through: int | None = None) -> tuple[bytes, int, int] | None:
    """One closed month of a chain's events as JSON lines: a header (chain, tenant, month, first and last
    sequence, count, the hash before the first and the last hash), then each event's sequence, prev_hash, hash
    and canonical form (what its hash covers), in sequence order, so that anyone can recompute the hashes
    without Enclave. None when the chain has no event that month. `through`: only the events up to that
    sequence (what a sealed copy holds). Returns (body, first, last sequence)."""
    start, end = _month_bounds(month)
    query = AuditEvent.unscoped_objects.filter(chain=chain, occurred_at__gte=start, occurred_at__lt=end)
    if through is not None:
        query = query.filter(sequence__lte=through)
    events = list(query.order_by("sequence"))
    if not events:
        return None
    header = {
        "chain": chain.key, "tenant_id": chain.tenant_id, "month": f"{month.year:04d}-{month.month:02d}",
        "first_sequence": events[0].sequence, "last_sequence": events[-1].sequence, "count": len(events),
        "prev_hash": events[0].prev_hash, "last_hash": events[-1].hash,
    }  # fmt: skip
    lines = [json.dumps(header, sort_keys=True, separators=(",", ":"))]
    for event in events:
        line = {"sequence": event.sequence, "prev_hash": event.prev_hash, "hash": event.hash,
                "event": json.loads(event.canonical())}  # fmt: skip
        lines.append(json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=True))
    return ("\n".join(lines) + "\n").encode(), events[0].sequence, events[-1].sequence


def _worm_write(store: worm.ObjectLockS3Storage, *, chain: AuditChain, kind: str, path: str, body: bytes,
                **fields: Any) -> WormCopy:  # fmt: skip
    """Write `body` locked at `path` (or adopt the identical object a run that died before its row left) and
    record the copy. A different object already there is an error: the WORM store is never overwritten."""
    sha = hashlib.sha256(body).hexdigest()
    state = worm.lock_state(store, path)
    if state is not None and state.sha256 != sha:
        raise ValueError(f"{path}: the WORM store holds other bytes under this name")
    if state is None:
        state = worm.put_locked(store, path, body)
    if state.mode != worm.COMPLIANCE or state.retain_until is None:
        raise ValueError(f"{path}: written without a compliance-mode lock ({state.mode or 'no lock'})")
    return WormCopy.objects.create(
        chain=chain, kind=kind, path=path, sha256=sha, size=len(body), version_id=state.version_id,
        lock_mode=state.mode, retain_until=state.retain_until, **fields,
    )  # fmt: skip


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_worm_anchor(*, now: Any = None) -> list[WormCopy]:
    """Write to the WORM store (AUDIT_WORM_STORE) every signed digest not yet there (its file, as the replica
    store holds it) and every closed month (UTC) of every events chain not yet sealed (`audit_segment_body`).
    Refuses to write to a bucket that is not WORM (Object Lock off, or no compliance default retention of
    AUDIT_WORM_RETENTION_DAYS): raises a critical SecurityAlert instead. Each tenant's chain records
    AUDIT_WORM_WRITTEN with the objects written, their versions and lock dates. Idempotent. System job; off when
    AUDIT_WORM_STORE is empty. Returns the copies written."""
    store = _worm_store()
    if store is None:
        return []
    now = now or timezone.now()
    unfit = worm.bucket_problems(store)
    if unfit:
        security_alert_raise(
            kind="audit_worm_unfit", summary="Audit WORM store refused: " + "; ".join(unfit),
            event=EventType.AUDIT_WORM_WRITTEN, severity=SecurityAlert.Severity.CRITICAL,
            outcome=Outcome.MAJOR_FAILURE, extra={"problems": unfit},
        )  # fmt: skip
        return []
    done = set(WormCopy.objects.values_list("path", flat=True))
    written: list[WormCopy] = []
    replica = storages["replica"]
    for digest in AuditDigest.objects.select_related("chain").exclude(path="").order_by("pk"):
        if digest.path in done:
            continue
        with replica.open(digest.path, "rb") as handle:
            body = handle.read()
        written.append(_worm_write(store, chain=digest.chain, kind=WormCopy.DIGEST, path=digest.path, body=body))
    cutoff = (now - WORM_SEAL_GRACE).astimezone(UTC)
    first_open = datetime(cutoff.year, cutoff.month, 1, tzinfo=UTC)
    for chain in AuditChain.objects.exclude(key__startswith="changes:").order_by("pk"):
        months = AuditEvent.unscoped_objects.filter(chain=chain, occurred_at__lt=first_open).datetimes(
            "occurred_at", "month", tzinfo=UTC
        )
        for started in months:
            month = started.date()
            path = WormCopy.segment_path(chain, month)
            if path in done:
                continue
            segment = audit_segment_body(chain=chain, month=month)
            if segment is None:
                continue
            body, first, last = segment
            written.append(_worm_write(store, chain=chain, kind=WormCopy.SEGMENT, path=path, body=body,
                                       month=month, first_sequence=first, last_sequence=last))  # fmt: skip
    by_chain: dict[int, list[WormCopy]] = {}
    for copy in written:
        by_chain.setdefault(copy.chain_id, []).append(copy)
    for chain in AuditChain.objects.filter(pk__in=by_chain).select_related("tenant"):
        objects = [{"path": c.path, "kind": c.kind, "sha256": c.sha256, "version_id": c.version_id,
                    "retain_until": c.retain_until.isoformat()} for c in by_chain[chain.pk]]  # fmt: skip
        audit_event_record(
            event=EventType.AUDIT_WORM_WRITTEN, tenant=chain.tenant, system_principal="enclave:audit-worm",
            extra={"objects": objects, "bucket": store.bucket_name},
        )  # fmt: skip
    return written


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_worm_verify() -> list[str]:
    """Check the WORM store: the bucket is still WORM, and every recorded copy's version is there with its
    SHA-256, in compliance mode, retained at least until the recorded date, not hidden by a newer version or a
    delete marker, and (a segment) still what the database's events of that month make. Records
    AUDIT_WORM_VERIFIED on the platform chain, or a critical SecurityAlert naming the problems. System job.
    Returns the problems (empty: all good; also empty, with nothing recorded, when the store is off)."""
    store = _worm_store()
    if store is None:
        return []
    problems = worm.bucket_problems(store)
    copies = list(WormCopy.objects.select_related("chain").order_by("pk"))
    for copy in copies:
        state = worm.lock_state(store, copy.path, version_id=copy.version_id)
        if state is None:
            problems.append(f"{copy.path}: the locked version {copy.version_id} is gone")
            continue
        if state.sha256 != copy.sha256:
            problems.append(f"{copy.path}: the locked version's bytes changed")
        if state.mode != worm.COMPLIANCE or state.retain_until is None or state.retain_until < copy.retain_until:
            problems.append(f"{copy.path}: no longer locked in compliance mode until {copy.retain_until.date()}")
        latest = worm.lock_state(store, copy.path)
        if latest is None:
            problems.append(f"{copy.path}: hidden by a delete marker (the locked version is kept)")
        elif latest.version_id != copy.version_id:
            problems.append(f"{copy.path}: a newer version was written above the locked one")
        if copy.kind == WormCopy.SEGMENT and copy.month is not None:
            segment = audit_segment_body(chain=copy.chain, month=copy.month, through=copy.last_sequence)
            if segment is None or hashlib.sha256(segment[0]).hexdigest() != copy.sha256:
                problems.append(f"{copy.path}: the database's events of that month differ from the sealed copy")
    extra = {"problems": problems, "copies": len(copies), "bucket": store.bucket_name}
    if problems:
        security_alert_raise(
            kind="audit_worm_verification_failed", summary="Audit WORM store verification failed: "
            + "; ".join(problems), event=EventType.AUDIT_WORM_VERIFIED, severity=SecurityAlert.Severity.CRITICAL,
            outcome=Outcome.MAJOR_FAILURE, extra=extra,
        )  # fmt: skip
    else:
        audit_event_record(event=EventType.AUDIT_WORM_VERIFIED, system_principal="enclave:audit-worm", extra=extra)
    return problems


# Monthly partitions of the events' table (migration 0009)
# ------------------------------------------------------------------------------


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_partitions_ensure(*, months_ahead: int | None = None, today: Any = None) -> list[str]:
    """Make the monthly partitions of the audit events' table that are missing, from this month (UTC) to
    `months_ahead` months ahead (AUDIT_PARTITION_MONTHS_AHEAD), and return the names of those made. Idempotent:
    a month that has its partition is skipped. A month whose events already sit in the default partition cannot
    get its own (PostgreSQL refuses): skipped with a warning, the events stay where they are. System job."""
    months_ahead = settings.AUDIT_PARTITION_MONTHS_AHEAD if months_ahead is None else months_ahead
    today = today or timezone.now().astimezone(UTC).date()
    made = []
    year, month = today.year, today.month
    with connection.cursor() as cursor:
        for _ in range(months_ahead + 1):
            first = date(year, month, 1)
            cursor.execute("SELECT audit_auditevent_partition_ensure(%s)", [first])
            if cursor.fetchone()[0]:
                made.append(f"audit_auditevent_y{year:04d}m{month:02d}")
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    if made:
        logger.info("audit partitions made: %s", ", ".join(made))
    return made


# Forwarding to the hospital's audit repository: RFC 5424 syslog over TLS, TCP or UDP (IHE ATNA)
# ------------------------------------------------------------------------------

SYSLOG_FACILITY_AUTHPRIV = 10
SYSLOG_BATCH = 500


def _sd_escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(event: AuditEvent, *, hostname: str) -> bytes:
    """One event as an RFC 5424 message: PRI (authpriv; notice, or warning for a failure), the event's time,
    our host, app `enclave`, MSGID the DICOM Event ID, structured data naming the tenant, chain position and
    hash, and the A.5 fields as JSON."""
    severity = 5 if event.outcome == 0 else 4
    pri = SYSLOG_FACILITY_AUTHPRIV * 8 + severity
    stamp = event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    tenant = event.tenant.slug if event.tenant is not None else "platform"
    sd = (
        f'[enclave@32473 tenant="{_sd_escape(tenant)}" seq="{event.sequence}" outcome="{event.outcome}" '
        f'hash="{event.hash}"]'
    )
    body = {
        "EventID": event.event_id, "EventIDDisplay": event.event_id_display, "EventTypeCode": event.event_type_code,
        "EventActionCode": event.action, "EventDateTime": stamp, "EventOutcomeIndicator": event.outcome,
        "EventOutcomeDescription": event.outcome_description, "UserID": event.actor_username,
        "RoleIDCode": event.actor_role, "SystemPrincipal": event.system_principal,
        "NetworkAccessPointID": event.source_address or "", "ParticipantObjects": event.participants,
        "RequestID": event.request_id, "Verb": event.verb,
    }  # fmt: skip
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    header = f"<{pri}>1 {stamp} {hostname or '-'} enclave - {event.event_id or '-'} {sd} "
    return header.encode() + b"\xef\xbb\xbf" + text.encode()


class SyslogSender:
    """A connection to the configured receiver. TCP and TLS frame messages by octet counting (RFC 6587 3.4.1,
    RFC 5425); UDP sends one datagram per message (RFC 5426)."""

    def __init__(self, *, host: str, port: int, protocol: str, ca_file: str = "", timeout: float = 5.0) -> None:
        self.protocol = protocol
        self.address = (host, port)
        if protocol == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            return
        raw = socket.create_connection(self.address, timeout=timeout)
        if protocol == "tls":
            context = ssl.create_default_context(cafile=ca_file or None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self.sock = context.wrap_socket(raw, server_hostname=host)
        elif protocol == "tcp":
            self.sock = raw
        else:
            raw.close()
            raise ValueError(f"unknown syslog protocol {protocol!r}")

    def send(self, message: bytes) -> None:
        if self.protocol == "udp":
            self.sock.sendto(message, self.address)
        else:
            self.sock.sendall(str(len(message)).encode() + b" " + message)

    def close(self) -> None:
        self.sock.close()


@platform_scope()  # platform work: every tenant's rows (tenants.scoping)
def audit_syslog_forward() -> int:
    """Send every audit event not yet forwarded, chain by chain in sequence order, and advance each chain's
    cursor after each message sent: events reach the receiver in order, and a receiver that is down stops the
    run (the next run resumes at the first unsent event). A crash between a send and its cursor update resends
    that one event (at least once; the receiver can drop duplicates by tenant and sequence). System job; off when
    AUDIT_SYSLOG_HOST is empty. Returns how many events were sent."""
    if not settings.AUDIT_SYSLOG_HOST:
        return 0
    hostname = socket.gethostname()
    try:
        sender = SyslogSender(
            host=settings.AUDIT_SYSLOG_HOST, port=settings.AUDIT_SYSLOG_PORT,
            protocol=settings.AUDIT_SYSLOG_PROTOCOL, ca_file=settings.AUDIT_SYSLOG_CA_FILE,
        )  # fmt: skip
    except OSError:
        return 0  # the receiver is down: store, and forward later
    sent = 0
    try:
        for chain in AuditChain.objects.exclude(key__startswith="changes:").order_by("pk"):
            cursor, _ = SyslogCursor.objects.get_or_create(chain=chain)
            events = AuditEvent.unscoped_objects.filter(chain=chain, sequence__gt=cursor.last_sequence)
            for event in events.select_related("tenant").order_by("sequence")[:SYSLOG_BATCH]:
                try:
                    sender.send(syslog_message(event, hostname=hostname))
                except OSError:
                    return sent
                SyslogCursor.objects.filter(pk=cursor.pk).update(
                    last_sequence=event.sequence, last_sent_at=timezone.now()
                )
                sent += 1
    finally:
        sender.close()
    return sent


def audit_log_used_record(
    *,
    actor: Any,
    tenant: Any,
    target: Any = None,
    participants: Any = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """A reading of the audit trail itself (DICOM 110101 Audit Log Used): the browser, an event or change, alerts,
    the dashboard, reports and exports record what was read, and whose patient data it named, before it is shown.
    The one place the audit doors record their reads (never the views themselves)."""
    return audit_event_record(
        event=EventType.AUDIT_LOG_USED,
        actor=actor,
        tenant=tenant,
        target=target,
        participants=participants or [],
        extra=extra or {},
    )


def disclosure_accounting_suspend(
    *, actor: Any, tenant: Tenant, disclosure: AuditEvent, until: datetime, agency: str, statement: str = ""
) -> AuditEvent:
    """Withhold one disclosure from the patient's accounting until `until` (HIPAA 164.528(a)(2)): a health
    oversight agency or a law enforcement official stated that telling the patient would impede its activities.
    The suspension is itself the audit record (DISCLOSURE_ACCOUNTING_SUSPENDED, naming the disclosure, its
    patients, the agency and the end); the accounting reads it back. Raises ValidationError for an end already
    past or no agency. The caller checks `tenants.view_audit` (audit.selectors.audit_disclosure_get)."""
    agency = agency.strip()
    if not agency:
        raise ValidationError("Name the agency or official who asked for the suspension.")
    if timezone.is_naive(until):
        until = until.replace(tzinfo=UTC)
    if until <= timezone.now():
        raise ValidationError("The end of the suspension must be in the future.")
    patients = [p for p in disclosure.participants or [] if p.get("type") in ("patient", "study")]
    return audit_event_record(
        event=EventType.DISCLOSURE_ACCOUNTING_SUSPENDED,
        actor=actor,
        tenant=tenant,
        participants=[{"type": "audit event", "id": str(disclosure.public_id), "role": "suspended disclosure"},
                      *patients],
        extra={"disclosure": str(disclosure.public_id), "until": until.astimezone(UTC).isoformat(),
               "agency": agency[:200], "statement": statement.strip()[:500]},
    )  # fmt: skip
