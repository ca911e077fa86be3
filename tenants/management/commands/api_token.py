"""manage.py api_token create|revoke|list: API tokens for scripts and integrations, made by an operator.

`create` prints the token alone on stdout, so that a script can capture it:
    TOKEN=$(./manage.py api_token create --user north-admin --tenant north --days 30)
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.context import audit_context
from tenants import access, selectors, services
from tenants.models import Tenant, User
from tenants.scoping import tenant_scope

PRINCIPAL = "manage.py api_token"


class Command(BaseCommand):
    help = "Create, revoke or list API tokens of a member of a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,revoke,list}")
        create = actions.add_parser("create", help="Create a token and print it (alone) on stdout.")
        create.add_argument("--user", required=True, help="User name of a current member of the tenant.")
        create.add_argument("--tenant", required=True, help="Tenant slug.")
        create.add_argument("--days", type=int, default=None, help="Days until it expires (default: settings).")
        create.add_argument("--name", default="manage.py api_token", help="What will use the token.")
        revoke = actions.add_parser("revoke", help="Revoke a token by its id.")
        revoke.add_argument("--id", required=True, dest="public_id", help="The token's id (see `list`).")
        revoke.add_argument("--tenant", required=True, help="Tenant slug.")
        listing = actions.add_parser("list", help="List a member's tokens in a tenant.")
        listing.add_argument("--user", required=True, help="User name.")
        listing.add_argument("--tenant", required=True, help="Tenant slug.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"There is no tenant {options['tenant']!r}.")
        with tenant_scope(tenant), audit_context(system_principal=PRINCIPAL):
            if action == "create":
                self.create(tenant, self.member(tenant, options["user"]), name=options["name"], days=options["days"])
            elif action == "revoke":
                self.revoke(options["public_id"])
            else:
                self.list_tokens(self.member(tenant, options["user"]))

    def member(self, tenant: Tenant, username: str) -> User:
        user = User.objects.filter(username__iexact=username).first()
        if user is None or access.membership_current_get(user=user, tenant=tenant) is None:
            raise CommandError(f"{username!r} is not a current member of {tenant.slug!r}: no token for them there.")
        return user

    def create(self, tenant: Tenant, user: User, *, name: str, days: int | None) -> None:
        try:
            _, raw = services.api_token_create(actor=user, tenant=tenant, name=name, days=days)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        self.stdout.write(raw)

    def revoke(self, public_id: str) -> None:
        try:
            token = selectors.api_token_get_for_operator(public_id=public_id)
        except access.NotVisible as exc:
            raise CommandError(f"This tenant has no token {public_id!r}.") from exc
        # Revoked in the owner's name (the only actor the service accepts without tenant-admin rights); the audit
        # event also names this command as the system principal.
        already = token.revoked_at is not None
        services.api_token_revoke(actor=token.user, token=token)
        state = "was already revoked" if already else "is revoked"
        self.stdout.write(f"Token {token.public_id} ({token.prefix}…, {token.user.username}) {state}.")

    def list_tokens(self, user: User) -> None:
        for token in selectors.api_token_list(actor=user):
            last_used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            self.stdout.write(
                f"{token.public_id}  {token.status:<8} {token.prefix}…  expires {token.expires_at:%Y-%m-%d %H:%M}  "
                f"last used {last_used}  {token.name}"
            )
