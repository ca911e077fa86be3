"""`manage.py backup_database [--keep-daily N]`: back the database up now (what the daily beat job does).

pg_dump of one snapshot, encrypted under a fresh key wrapped by the master key, written with its manifest to the
replica store under backups/; then the backups older than the last N days that have backups are deleted
(BACKUP_KEEP_DAILY). Prints the backup's name. Exits 1 when pg_dump is missing or fails.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.services.backups import database_backup
from studies.storage.backups import BackupError
from studies.storage.pgtools import PgToolError


class Command(BaseCommand):
    help = "Back the database up, encrypted, to the replica store; then prune the old backups."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--keep-daily", type=int, default=None, help="days of backups to keep (default: setting)")

    def handle(self, *args: Any, keep_daily: int | None = None, **options: Any) -> None:
        try:
            manifest = database_backup(keep_daily=keep_daily)
        except (BackupError, PgToolError, ValueError) as exc:
            raise CommandError(str(exc), returncode=1) from exc
        rows = sum(manifest.tables.values())
        self.stdout.write(
            f"{manifest.name}: {manifest.size} bytes (encrypted {manifest.encrypted_size}), "
            f"{len(manifest.tables)} tables, {rows} rows, sha256 {manifest.sha256}"
        )
