"""`manage.py restore_blobs --from-replica [--tenant SLUG] [--restart]`: rebuild a lost primary blob store from the
replica (issue 13).

Every replica copy is decrypted and checked against its row's size and SHA-256 before it is written to the
primary; a copy that fails is named and not written. The tenants' `keys/` files are copied verbatim. Resumable:
run it again after an interruption and it goes on after the last blob written (`--restart` starts over). Prints
the counts and the throughput (GB of ciphertext per minute). Exits 1 when any replica copy failed its check.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.context import audit_context
from studies.services.fixity import RestoreReport, blob_restore_from_replica
from tenants.models import Tenant
from tenants.scoping import tenant_scope

GB = 1024**3


def throughput(nbytes: int, seconds: float) -> float:
    """GB per minute (GB = 2**30 bytes)."""
    return (nbytes / GB) / (seconds / 60) if seconds > 0 else 0.0


class Command(BaseCommand):
    help = "Rebuild the primary blob store from the replica, verifying every hash; resumable."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from-replica", action="store_true", required=True, help="Restore from the replica.")
        parser.add_argument("--tenant", metavar="SLUG", help="Restore only this tenant's blobs.")
        parser.add_argument("--restart", action="store_true", help="Ignore where an interrupted run stopped.")
        parser.add_argument("--workers", type=int, default=4, help="Threads reading and writing blobs (default 4).")

    def handle(
        self, *args: Any, tenant: str | None = None, restart: bool = False, workers: int = 4, **options: Any
    ) -> None:
        if tenant is not None:
            tenants = list(Tenant.objects.filter(slug=tenant))
            if not tenants:
                raise CommandError(f"No tenant with the slug {tenant!r}.", returncode=2)
        else:
            tenants = list(Tenant.objects.order_by("pk"))
        started = time.monotonic()
        total = RestoreReport()
        for one in tenants:
            tenant_started = time.monotonic()

            def progress(report: RestoreReport, slug: str = one.slug, since: float = tenant_started) -> None:
                rate = throughput(report.bytes_written, time.monotonic() - since)
                self.stdout.write(f"  {slug}: {report.restored} restored, {report.failed} failed, {rate:.2f} GB/min")

            with tenant_scope(one), audit_context(system_principal="enclave:restore-blobs"):
                report = blob_restore_from_replica(restart=restart, workers=workers, progress=progress)
            seconds = time.monotonic() - tenant_started
            resumed = f" (resumed after blob #{report.resumed_after})" if report.resumed_after else ""
            self.stdout.write(
                f"tenant {one.slug}: {report.restored} blobs restored{resumed}, {report.failed} failed, "
                f"{report.key_files} key files copied, {report.bytes_written / GB:.3f} GB in {seconds:.1f} s, "
                f"{throughput(report.bytes_written, seconds):.2f} GB/min"
            )
            for failure in report.failures:
                self.stderr.write(f"  replica copy failed its check: {failure}")
            total.restored += report.restored
            total.failed += report.failed
            total.key_files += report.key_files
            total.bytes_written += report.bytes_written
        seconds = time.monotonic() - started
        rate = throughput(total.bytes_written, seconds)
        self.stdout.write(
            f"total: {total.restored} blobs restored, {total.failed} failed, {total.key_files} key files, "
            f"{total.bytes_written / GB:.3f} GB in {seconds:.1f} s, {rate:.2f} GB/min"
        )
        if total.failed:
            raise CommandError(
                f"{total.failed} replica copies failed their check; they were not restored.", returncode=1
            )
