"""The training gate, registered with `tenants.access` (AppConfig.ready): a person whose blocking requirement
is missing or has lapsed past its grace days gets no patient data, through any door, whatever their role,
shares or break-glass. Only the refusal is decided here; `tenants.access` runs it inside its one decision."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from tenants.access import GateRefused
from tenants.models import Tenant
from training.selectors import RequirementStatus, training_block_get, training_block_of, training_block_statement


def training_gate(actor: Any, tenant: Tenant) -> None:
    _refuse_if_blocked(training_block_get(user=actor), tenant)


def training_gate_statement(actor: Any, tenant: Tenant) -> tuple[str, Any]:
    """The gate's one statement, for `tenants.access` to send with the permissions' in one round trip."""
    del tenant  # the current scope's (training_block_statement)
    return training_block_statement(user=actor)


def training_gate_decide(actor: Any, tenant: Tenant, rows: list[tuple[Any, ...]]) -> None:
    """`training_gate` from the rows of `training_gate_statement`, read just now."""
    del actor
    _refuse_if_blocked(training_block_of(rows), tenant)


def _refuse_if_blocked(block: RequirementStatus | None, tenant: Tenant) -> None:
    if block is None:
        return
    where = reverse("portal:training_me", kwargs={"tenant": tenant.slug})
    if block.expires_on is None:
        message = (
            f"Training “{block.course.title}” is required for your role and you have no current completion "
            f"(required since {block.lapses_on.isoformat()}). Record it on your training page ({where}) to get "
            "access to patient data."
        )
    else:
        message = (
            f"Training “{block.course.title}” lapsed on {block.expires_on.isoformat()}. Record a current "
            f"completion on your training page ({where}) to get access to patient data again."
        )
    raise GateRefused(message, code=block.reason_code)
