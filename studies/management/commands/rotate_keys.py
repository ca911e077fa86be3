"""`manage.py rotate_keys`: rotate envelope-encryption keys without rewriting any image (issue 13).

- `--tenant SLUG` (or `--all-tenants`): a new tenant key version; every study key file and tenant-wrapped data
  key is rewrapped under it; the old version is retired once nothing references it.
- `--master`: every live tenant key rewrapped by MASTER_KEY_NEW (set on every process first); afterwards make it
  MASTER_KEY and unset MASTER_KEY_NEW.
- `--adopt-study-keys` (with a tenant choice): instance blobs and thumbnails stored before study keys existed are
  rewrapped under their study's key, so that deleting a study shreds them too.

Every run is resumable: interrupted (killed, a store down), run it again and it carries on where it stopped.
Audited on each tenant's trail. Exit 1 when an old version is still referenced after the run (run it again).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.services import master_key_rotate, study_keys_adopt, tenant_key_rotate
from tenants.models import Tenant
from tenants.scoping import tenant_scope


class Command(BaseCommand):
    help = "Rotate a tenant's key (--tenant/--all-tenants), the master key (--master), or adopt study keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", help="The tenant whose key is rotated.")
        parser.add_argument("--all-tenants", action="store_true", help="Every tenant.")
        parser.add_argument("--master", action="store_true", help="Rewrap tenant keys under MASTER_KEY_NEW.")
        parser.add_argument(
            "--adopt-study-keys", action="store_true", help="Rewrap older blobs under their study keys."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        master, adopt = options["master"], options["adopt_study_keys"]
        if options["tenant"]:
            tenants = list(Tenant.objects.filter(slug=options["tenant"]))
            if not tenants:
                raise CommandError(f"No tenant with the slug {options['tenant']!r}.", returncode=2)
        elif options["all_tenants"] or master:
            tenants = list(Tenant.objects.order_by("slug"))
        else:
            raise CommandError("Say which keys: --tenant SLUG, --all-tenants, or --master.")
        if master and not settings.MASTER_KEY_NEW:
            raise CommandError("Set MASTER_KEY_NEW (the new master key) on every process first.")
        unfinished = False
        for tenant in tenants:
            with tenant_scope(tenant):
                if master:
                    count = master_key_rotate()
                    self.stdout.write(f"{tenant.slug}: {count} tenant key(s) rewrapped under the new master key")
                elif adopt:
                    count = study_keys_adopt()
                    self.stdout.write(f"{tenant.slug}: {count} blob(s) rewrapped under their study keys")
                else:
                    report = tenant_key_rotate()
                    self.stdout.write(
                        f"{tenant.slug}: key v{report.version}{' (resumed)' if report.resumed else ''}: "
                        f"{report.blobs} data key(s) and {report.study_keys} study key(s) rewrapped; "
                        f"retired {report.retired or 'none'}"
                    )
                    if report.still_referenced:
                        unfinished = True
                        self.stderr.write(
                            f"{tenant.slug}: versions {report.still_referenced} still referenced: run again"
                        )
        if master:
            self.stdout.write("Done: now set MASTER_KEY to the new key on every process and unset MASTER_KEY_NEW.")
        if unfinished:
            raise CommandError("Rotation not finished.", returncode=1)
