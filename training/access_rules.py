"""The training gate, registered with `tenants.access` (AppConfig.ready): a person whose blocking requirement
is missing or has lapsed past its grace days gets no patient data, through any door, whatever their role,
shares or break-glass. Only the refusal is decided here; `tenants.access` runs it inside its one decision."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from tenants.access import GateRefused
from tenants.models import Tenant
from training.selectors import training_block_get


def training_gate(actor: Any, tenant: Tenant) -> None:
    block = training_block_get(user=actor)
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
