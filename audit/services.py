"""The one function that writes audit events."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from auditlog.models import LogEntry
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from audit import context as audit_context
from audit.events import EventType, Outcome
from audit.models import AuditChain, AuditEvent, ChangeSeal, SecurityAlert
from tenants.access import membership_current_get, tenant_list_for_user
from tenants.models import Tenant, TenantOwnedModel, User
from tenants.scoping import current_tenant_or_none


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


def _chain_locked(tenant: Tenant | None) -> AuditChain:
    """The chain's head row, locked until the transaction ends (a per-tenant lock)."""
    key = AuditChain.key_for(tenant)
    try:
        return AuditChain.objects.select_for_update().get(key=key)
    except AuditChain.DoesNotExist:
        pass
    try:
        with transaction.atomic():
            AuditChain.objects.create(key=key, tenant=tenant)
    except IntegrityError:
        pass  # another writer created it first
    return AuditChain.objects.select_for_update().get(key=key)


def _normalized_address(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


@transaction.atomic
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
    chain head is locked for the rest of that transaction: keep the transaction short.
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

    entries = [participant(p) for p in participants]
    target_type = target_id = ""
    if target is not None:
        target_entry = participant(target)
        target_type, target_id = target_entry["type"], target_entry["id"]
        entries.insert(0, target_entry)

    chain = _chain_locked(tenant)
    row = AuditEvent(
        chain=chain,
        tenant=tenant,
        sequence=chain.last_sequence + 1,
        occurred_at=timezone.now(),
        event_type=event.value,
        event_id=spec.event_id.value,
        event_id_display=spec.event_id.display,
        event_type_code=spec.event_type.value if spec.event_type else "",
        event_type_display=spec.event_type.display if spec.event_type else "",
        action=spec.action,
        outcome=outcome,
        outcome_description=outcome_description[:300],
        actor_user=user,
        actor_username=(user.username if user is not None else actor_username)[:150],
        actor_role=actor_role,
        system_principal=system_principal or ctx.system_principal,
        source_address=_normalized_address(source_address or ctx.source_address),
        target_type=target_type,
        target_id=target_id,
        participants=entries,
        request_id=ctx.request_id,
        extra=dict(extra or {}),
        prev_hash=chain.last_hash,
    )
    row.hash = row.compute_hash(chain.last_hash)
    row.save(force_insert=True)
    chain.last_sequence = row.sequence
    chain.last_hash = row.hash
    chain.save(update_fields=["last_sequence", "last_hash"])
    return row


def audit_chain_create(*, tenant: Tenant) -> AuditChain:
    """Create a tenant's chain head. Idempotent."""
    chain, _ = AuditChain.objects.get_or_create(key=AuditChain.key_for(tenant), defaults={"tenant": tenant})
    return chain


def access_denied_record(*, actor: Any, where: str, method: str) -> AuditEvent:
    """A member was refused a function of their tenant (a 403): on the trail for intrusion review."""
    return audit_event_record(
        event=EventType.ACCESS_DENIED,
        actor=actor,
        outcome=Outcome.MINOR_FAILURE,
        outcome_description="permission denied",
        extra={"where": where, "method": method},
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
) -> SecurityAlert:
    """Record the audit event and open a SecurityAlert pointing at it, in one transaction. `summary` is shown to
    reviewers: never put patient data in it (the event's participants carry what is needed)."""
    row = audit_event_record(
        event=event, actor=actor, tenant=tenant, target=target, participants=participants,
        outcome=outcome, outcome_description=summary, extra=extra,
    )  # fmt: skip
    alert = SecurityAlert(tenant=row.tenant, kind=kind, summary=summary[:300], severity=severity, event=row)
    alert.save()
    return alert


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


def audit_changes_unsealed(*, tenant_id: int | None) -> models.QuerySet[LogEntry]:
    """The tenant's (None: the platform's) django-auditlog entries that no seal covers yet, oldest first."""
    sealed = ChangeSeal.objects.filter(entry_id=models.OuterRef("pk"))
    return _entries_of(tenant_id).filter(~models.Exists(sealed)).order_by("pk")


def audit_changes_seal(*, tenant_id: int | None) -> int:
    """Append a seal for each unsealed django-auditlog entry of one tenant (None: the platform), in entry order,
    to the tenant's change chain; return how many. System job (no actor). Idempotent and safe to run
    concurrently: the chain head is locked per batch, and an entry is sealed once (`entry_id` is unique)."""
    key = ChangeSeal.chain_key(tenant_id)
    total = 0
    while True:
        with transaction.atomic():
            chain = _change_chain_locked(key)
            entries = list(audit_changes_unsealed(tenant_id=tenant_id)[:SEAL_BATCH])
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
    """Seal every tenant's pending entries (the beat job's fallback to the on-commit sealing)."""
    tenant_ids = set(Tenant.objects.values_list("pk", flat=True))
    return sum(audit_changes_seal(tenant_id=tenant_id) for tenant_id in [*sorted(tenant_ids), None])


def logentry_seal_on_commit(sender: Any, instance: LogEntry, created: bool, **kwargs: Any) -> None:
    """post_save of LogEntry: seal the entry's tenant's pending entries once its transaction has committed
    (at once in autocommit). Queued once per tenant per transaction; a rolled-back transaction queues nothing."""
    if not created:
        return
    data = instance.additional_data if isinstance(instance.additional_data, dict) else {}
    tenant_id = data.get("tenant_id")
    for _, queued, *_ in connection.run_on_commit:
        if getattr(queued, "audit_seal_tenant", None) == (tenant_id,):
            return

    def seal() -> None:
        audit_changes_seal(tenant_id=tenant_id)

    seal.audit_seal_tenant = (tenant_id,)  # type: ignore[attr-defined]
    transaction.on_commit(seal)
