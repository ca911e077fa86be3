"""`manage.py restore_drill [--sample-percent P] [--sample-min N]`: restore the latest backup into a scratch
database and folder, check it, and record the drill (SECURITY.md B8, B9).

Checks each table's row count against the manifest, a sample of each tenant's instance blobs decrypted end to
end and hashed, and every audit chain on the restored rows; prints the measured recovery time and what was
checked. Exits 1 when the drill failed (the RestoreDrill row and the audit trail say why).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.models import RestoreDrill
from studies.services.backups import restore_drill_run


class Command(BaseCommand):
    help = "Restore the latest backup into a scratch database and folder, check it, and record the drill."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sample-percent", type=float, default=None, help="share of instance blobs to check")
        parser.add_argument("--sample-min", type=int, default=None, help="at least this many per tenant (or all)")

    def handle(self, *args: Any, **options: Any) -> None:
        drill = restore_drill_run(sample_percent=options["sample_percent"], sample_min=options["sample_min"])
        checks = {k: v for k, v in drill.checks.items() if k != "tenants"}
        seconds = f"{drill.recovery_seconds:.1f} s" if drill.recovery_seconds is not None else "not measured"
        self.stdout.write(
            f"restore drill {drill.pk} of backup {drill.backup_name or '(none)'}: {drill.status}; recovery time "
            f"{seconds}, {drill.bytes_restored} bytes restored; checked {checks}"
        )
        if drill.status != RestoreDrill.Status.PASSED:
            raise CommandError("\n".join(drill.problems), returncode=1)
