"""manage.py tenant_quota --tenant T [--per-hour BYTES|default] [--per-day BYTES|default]: a tenant's own ingestion
quotas (C-STORE, STOW-RS and upload together), set by a platform operator and recorded on the tenant's trail.
`default` hands the figure back to INGEST_QUOTA_BYTES_PER_HOUR / _PER_DAY; 0 means no quota. Without --per-hour
and --per-day it prints the quotas in force."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.context import audit_context
from tenants import services
from tenants.models import Tenant
from tenants.scoping import tenant_scope

PRINCIPAL = "manage.py tenant_quota"


def _figure(text: str) -> int | None:
    if text == "default":
        return None
    if not text.isdigit():
        raise CommandError(f"A quota is a number of bytes or 'default', not {text!r}.")
    return int(text)


class Command(BaseCommand):
    help = "Show or set a tenant's ingestion quotas (bytes per hour and per day)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--per-hour", default=None, help="Bytes per hour, 0 for none, or 'default'.")
        parser.add_argument("--per-day", default=None, help="Bytes per day, 0 for none, or 'default'.")

    def handle(self, *args: Any, tenant: str, per_hour: str | None, per_day: str | None, **options: Any) -> None:
        row = Tenant.objects.filter(slug=tenant).first()
        if row is None:
            raise CommandError(f"There is no tenant {tenant!r}.")
        if per_hour is not None or per_day is not None:
            hour = _figure(per_hour) if per_hour is not None else row.ingest_quota_bytes_per_hour
            day = _figure(per_day) if per_day is not None else row.ingest_quota_bytes_per_day
            with tenant_scope(row), audit_context(system_principal=PRINCIPAL):
                row = services.tenant_ingest_quota_set(tenant=row, per_hour=hour, per_day=day)
        for name, own, platform in (
            ("per hour", row.ingest_quota_bytes_per_hour, settings.INGEST_QUOTA_BYTES_PER_HOUR),
            ("per day", row.ingest_quota_bytes_per_day, settings.INGEST_QUOTA_BYTES_PER_DAY),
        ):
            figure = own if own is not None else platform
            source = "the tenant's own" if own is not None else "the platform's"
            self.stdout.write(f"{name}: {figure or 'no quota'} ({source})")
