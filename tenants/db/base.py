"""Django's PostgreSQL backend, with the tenant scope carried to the server (issue 14, row-level security).

Before a query runs, the connection's `enclave.tenant_id` setting is made equal to the scope of the code that runs
it (`tenants.scoping.database_scope()`: "", a tenant's id, or "platform"). The value the server holds is
remembered per connection, so the setting is sent only when the scope changes; a rollback (of a transaction or
to a savepoint) may undo it, so the remembered value is forgotten then and sent again before the next query.
It is sent in front of the statement, in the same string and round trip (Django's client-side cursors use the
simple query protocol, which runs the two in order), and apart only where that cannot be (executemany, a
server-side cursor, a composed statement).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from django.db.backends.postgresql import base, operations

from tenants.scoping import DATABASE_SETTING, database_scope

SET_SCOPE = "SELECT set_config(%s, %s, false)"
# Django's own transaction statements read no table: they pass as they are (and one of them may be the rollback
# of an aborted transaction, where nothing else may run).
TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")
_SCOPE_PREFIX = "SELECT set_config('" + DATABASE_SETTING + "', {}, false); "


def _literal(scope: str) -> str:
    """The scope as an SQL string literal, with no `%` (the statement after it may be formatted with parameters):
    a scope is "", a tenant's id or "platform" (tenants.scoping); anything else is refused."""
    if not (scope == "" or scope.isdigit() or scope.isidentifier()):
        raise ValueError(f"Not a database scope: {scope!r}")
    return f"'{scope}'"


_SCOPE_SENT = re.compile(r"(^|; )SELECT set_config\('" + re.escape(DATABASE_SETTING) + r"', '[^']*', false\); ")


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor: Any, sql: Any, params: Any) -> Any:
        """The statement as its caller wrote it: the scope's setting in front of it is the backend's own, as it was
        when it was sent apart (query logs and CaptureQueriesContext never showed it)."""
        query = super().last_executed_query(cursor, sql, params)
        return _SCOPE_SENT.sub(r"\1", query, count=1) if isinstance(query, str) else query


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The value of `enclave.tenant_id` on the server session, when known (None: unknown, send it).
        self.enclave_scope_sent: str | None = None
        self.execute_wrappers.insert(0, self._scope_carry)

    def _scope_carry(self, execute: Any, sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
        scope = database_scope()
        if scope == self.enclave_scope_sent or (isinstance(sql, str) and sql.startswith(TRANSACTION_CONTROL)):
            return execute(sql, params, many, context)
        raw = getattr(context.get("cursor"), "cursor", None)
        if many or not isinstance(sql, str) or not isinstance(raw, psycopg.ClientCursor) or self.connection._pipeline:
            with self.wrap_database_errors, self.connection.cursor() as cursor:
                cursor.execute(SET_SCOPE, (DATABASE_SETTING, scope))
            self.enclave_scope_sent = scope
            return execute(sql, params, many, context)
        # The setting rides in front of the statement, in the same round trip (the simple query protocol of
        # Django's client-side cursors runs both in order, as one implicit transaction outside a transaction: if
        # the statement fails, the setting is undone with it, so it counts as sent only once both have run).
        self.enclave_scope_sent = None
        result = execute(_SCOPE_PREFIX.format(_literal(scope)) + sql, params, many, context)
        raw.nextset()  # the statement's own result, as if it had been sent alone
        self.enclave_scope_sent = scope
        return result

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
