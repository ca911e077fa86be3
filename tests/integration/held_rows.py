"""A row written and left uncommitted by another connection, so that a worker inserting the same unique key waits
on it: how the crash tests stop a real worker at a known point before killing it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection, transaction

from tenants.models import Tenant
from tenants.scoping import tenant_scope


class RowHeld:
    """`insert()` run in `tenant`'s scope in a transaction of a thread of its own, held until the block ends, then
    rolled back. `what` names the row in a failure."""

    def __init__(self, tenant: Tenant, insert: Callable[[], object], *, what: str, hold_seconds: float = 300) -> None:
        self.tenant, self.insert, self.what, self.hold_seconds = tenant, insert, what, hold_seconds
        self.held, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        try:
            with tenant_scope(self.tenant), transaction.atomic():
                self.insert()
                self.held.set()
                self.release.wait(self.hold_seconds)
                transaction.set_rollback(True)
        except BaseException as exc:  # reported by __enter__/__exit__ in the test's thread
            self.error = exc
            self.held.set()
        finally:
            connection.close()

    def __enter__(self) -> RowHeld:
        self.thread.start()
        self.held.wait(30)
        if self.error is not None or not self.held.is_set():
            pytest.fail(f"could not hold the {self.what}: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(30)
        assert self.error is None, self.error
