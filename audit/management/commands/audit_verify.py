"""`manage.py audit_verify [--tenant SLUG]`: recompute every audit hash chain (or one tenant's): the audit events'
and the seals over django-auditlog's entries.

Exits 0 when every chain is whole. Otherwise exits 1 and names, for each broken chain, the first broken
sequence number and why (an altered event, a missing one, a broken link): evidence that someone with the
database's keys changed the trail (SECURITY.md E6). The Ed25519-signed digests of the chain heads are checked too
(rows and their files in the replica store: a forged or missing digest, a truncated tail that no longer reaches
a signed head). An unknown tenant exits 2. `--public-key` prints the key that checks the digests.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import signing
from audit.models import AuditChain, ChangeSeal
from audit.selectors import audit_chain_list, audit_chain_verify, audit_changes_verify, audit_digests_verify
from tenants.models import Tenant
from tenants.scoping import platform_scope


def chain_label(chain: AuditChain) -> str:
    return f"tenant {chain.tenant.slug}" if chain.tenant is not None else chain.key


class Command(BaseCommand):
    help = "Verify the audit events' hash chains; exit 1 naming the first broken sequence of each broken chain."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", help="Verify only this tenant's chain.")
        parser.add_argument(
            "--public-key", action="store_true", help="Print the public key that checks the signed digests, and stop."
        )

    @platform_scope()  # platform work: it reads every tenant's chain (tenants.scoping)
    def handle(self, *args: Any, tenant: str | None = None, public_key: bool = False, **options: Any) -> None:
        if public_key:
            text = signing.public_key_text()
            if not text:
                raise CommandError("No AUDIT_SIGNING_KEY nor AUDIT_SIGNING_PUBLIC_KEY is set.", returncode=2)
            key = signing.verify_key()
            assert key is not None
            self.stdout.write(f"ed25519 {text} (key id {signing.key_id(key)})")
            return
        only = None
        if tenant is not None:
            only = Tenant.objects.filter(slug=tenant).first()
            if only is None:
                raise CommandError(f"No tenant with the slug {tenant!r}.", returncode=2)
        chains = audit_chain_list(tenant=only).select_related("tenant").exclude(key__startswith="changes:")
        broken = []
        for chain in chains:
            result = audit_chain_verify(chain=chain)
            label = chain_label(chain)
            if result.ok:
                self.stdout.write(f"{label} ({chain.key}): {result.events} events, OK")
            else:
                broken.append(
                    f"{label}: chain broken at sequence {result.first_broken_sequence} ({result.reason}); "
                    f"{result.events} events verified before it"
                )
        # django-auditlog's entries: the seals of each tenant (and of the platform when verifying everything).
        tenants = [only] if only is not None else list(Tenant.objects.order_by("slug"))
        for tenant_id, label in [*((t.pk, f"changes of tenant {t.slug}") for t in tenants),
                                 *([(None, "changes of the platform")] if only is None else [])]:  # fmt: skip
            result = audit_changes_verify(tenant_id=tenant_id)
            if result.ok:
                self.stdout.write(f"{label} ({ChangeSeal.chain_key(tenant_id)}): {result.events} entries, OK")
            else:
                broken.append(
                    f"{label}: chain broken at sequence {result.first_broken_sequence} ({result.reason}); "
                    f"{result.events} entries verified before it"
                )
        # The signed digests of every chain verified here (events and change seals).
        digest_chains = audit_chain_list().filter(
            key__in=[chain.key for chain in chains]
            + [ChangeSeal.chain_key(t.pk) for t in tenants]
            + ([ChangeSeal.chain_key(None)] if only is None else [])
        )
        if signing.verify_key() is None:
            self.stdout.write("AUDIT_SIGNING_KEY is not set: signed digests not checked.")
        else:
            for chain in digest_chains:
                broken += [f"{chain.key}: {problem}" for problem in audit_digests_verify(chain=chain)]
        if not chains:
            self.stdout.write("No audit chain yet: nothing to verify.")
        if broken:
            raise CommandError("\n".join(broken), returncode=1)
