"""Django's PostgreSQL backend, with the tenant scope carried to the server (issue 14, row-level security).

Before a query runs, the connection's `enclave.tenant_id` setting is made equal to the scope of the code that runs
it (`tenants.scoping.database_scope()`: "", a tenant's id, or "platform"). The value the server holds is
remembered per connection, so the setting is sent only when the scope changes; a rollback (of a transaction or
to a savepoint) may undo it, so the remembered value is forgotten then and sent again before the next query.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from tenants.scoping import DATABASE_SETTING, database_scope

SET_SCOPE = "SELECT set_config(%s, %s, false)"
# Django's own transaction statements read no table: they pass as they are (and one of them may be the rollback
# of an aborted transaction, where nothing else may run).
TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The value of `enclave.tenant_id` on the server session, when known (None: unknown, send it).
        self.enclave_scope_sent: str | None = None
        self.execute_wrappers.insert(0, self._scope_carry)

    def _scope_carry(self, execute: Any, sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
        scope = database_scope()
        if scope != self.enclave_scope_sent and not (isinstance(sql, str) and sql.startswith(TRANSACTION_CONTROL)):
            with self.wrap_database_errors, self.connection.cursor() as cursor:
                cursor.execute(SET_SCOPE, (DATABASE_SETTING, scope))
            self.enclave_scope_sent = scope
        return execute(sql, params, many, context)

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        self.enclave_scope_sent = None
        return super().get_new_connection(conn_params)

    def _rollback(self) -> None:
        try:
            super()._rollback()  # type: ignore[misc]
        finally:
            self.enclave_scope_sent = None

    def _savepoint_rollback(self, sid: str) -> None:
        try:
            super()._savepoint_rollback(sid)  # type: ignore[misc]
        finally:
            self.enclave_scope_sent = None

    def _close(self) -> None:
        self.enclave_scope_sent = None
        super()._close()  # type: ignore[misc]
