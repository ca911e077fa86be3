"""Trusted networks: the address ranges a tenant may be reached from, kept by its administrators, and the
refusal of a caller from anywhere else (the decision itself is tenants.access.network_allows)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from audit.events import EventType, Outcome
from audit.services import audit_event_record, security_alert_raise
from tenants import access
from tenants.models import Tenant, TrustedNetwork
from tenants.scoping import tenant_scope


@transaction.atomic
def trusted_network_add(*, actor: Any, tenant: Tenant, network: str, label: str = "") -> TrustedNetwork:
    """Add a range (CIDR, IPv4 or IPv6) to the current tenant's trusted networks (`tenants.manage_networks`).
    A bad range is a ValidationError saying why; the same range twice is refused. Records TRUSTED_NETWORK_ADDED.

    Adding the first range closes the tenant to every other address at once, the administrator's own included
    if it is outside: the page says so before it is saved."""
    access.require(actor, "tenants.manage_networks", tenant)
    row = TrustedNetwork(tenant=tenant, network=network, label=label.strip())
    row.full_clean()
    row.save()
    _ranges_copy(tenant)
    audit_event_record(
        event=EventType.TRUSTED_NETWORK_ADDED,
        actor=actor,
        target=row,
        extra={"network": row.network, "label": row.label},
    )
    return row


@transaction.atomic
def trusted_network_remove(*, actor: Any, network: TrustedNetwork) -> None:
    """Remove a range (`tenants.manage_networks`). Removing the last one opens the tenant to any address.
    Records TRUSTED_NETWORK_REMOVED."""
    access.require(actor, "tenants.manage_networks", network.tenant)
    audit_event_record(
        event=EventType.TRUSTED_NETWORK_REMOVED,
        actor=actor,
        target=network,
        extra={"network": network.network, "label": network.label},
    )
    network.delete()
    _ranges_copy(network.tenant)


def _ranges_copy(tenant: Tenant) -> None:
    """Copy the tenant's ranges onto its row (Tenant.network_ranges), in the change's transaction: the decision
    reads the row every request already loads, so it costs no query."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # two changes at once: the later sees both rows
    tenant.network_ranges = sorted(TrustedNetwork.objects.filter(tenant=tenant).values_list("network", flat=True))
    tenant.save(update_fields=["network_ranges", "updated_at"])


def network_require(*, tenant: Tenant, address: str | None, door: str, actor: Any = None, principal: str = "") -> None:
    """Raise `access.NetworkRefused` (a 403, or a rejected association) unless `address` may reach `tenant`.

    Every refusal is on the tenant's audit trail (NETWORK_REFUSED, with the door and the address); the first from
    an address in NETWORK_REFUSAL_ALERT_SECONDS also opens a security alert, so a scanner knocking all day is one
    alert, not thousands. Committed on its own: the refused request rolls nothing of it back."""
    if access.network_allows(tenant, address):
        return
    summary = f"A request to the {door} from {address or 'an unknown address'} is outside the trusted networks."
    common: dict[str, Any] = {
        "event": EventType.NETWORK_REFUSED,
        "actor": actor,
        "tenant": tenant,
        "outcome": Outcome.MINOR_FAILURE,
        "extra": {"door": door, "address": address or "", "principal": principal},
    }
    with tenant_scope(tenant), transaction.atomic():
        first = cache.add(f"enclave:network-refused:{tenant.pk}:{address}", 1, settings.NETWORK_REFUSAL_ALERT_SECONDS)
        if first:
            security_alert_raise(kind="untrusted_network", summary=summary, subject=address or "", **common)
        else:
            audit_event_record(outcome_description=summary, **common)
    raise access.NetworkRefused()
