"""`manage.py restore_database --backup <name|latest> --target-url postgres://... [--force]`, or `--list`.

Decrypts a backup from the replica store (with the master key of this process's settings), checks it against its
manifest, and pg_restores it into the target database in one transaction. The target must be empty (a new
database) unless --force, which drops and replaces its tables. README "Restoring a backup" gives the commands for
`make run`'s embedded stack. Exits 1 on any failure, the target unchanged.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from studies.services.backups import database_restore
from studies.storage.backups import BackupError, backup_list
from studies.storage.pgtools import Database, PgToolError


class Command(BaseCommand):
    help = "Restore a database backup from the replica store into a target database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", action="store_true", help="list the backups and exit")
        parser.add_argument("--backup", default="latest", help="a backup's name, or latest (default)")
        parser.add_argument("--target-url", help="postgres://user@host:port/database (a Unix socket folder as the "
                            "host, percent-encoded)")  # fmt: skip
        parser.add_argument("--force", action="store_true", help="replace the tables of a non-empty target")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            for manifest in backup_list():
                self.stdout.write(
                    f"{manifest.name}  {manifest.created_at}  {manifest.size} bytes  "
                    f"{sum(manifest.tables.values())} rows"
                )
            return
        if not options["target_url"]:
            raise CommandError("--target-url is required (the database to restore into)", returncode=2)
        target = Database(options["target_url"])
        try:
            manifest = database_restore(backup=options["backup"], target=target, force=options["force"])
        except (BackupError, PgToolError) as exc:
            raise CommandError(str(exc), returncode=1) from exc
        except DatabaseError as exc:
            # The restore is done (the event is written after it); only DATABASE_URL's trail could not be reached.
            self.stderr.write(f"restored, but not recorded on the audit trail of DATABASE_URL: {exc}")
            return
        self.stdout.write(f"restored {manifest.name} ({manifest.created_at}) into {target.name}")
