"""Django's PostgreSQL backend, with the tenant scope carried to the server (issue 14, row-level security).

Before a query runs, the connection's `enclave.tenant_id` setting is made equal to the scope of the code that runs
it (`tenants.scoping.database_scope()`: "", a tenant's id, or "platform"). The value the server holds is
remembered per connection, so the setting is sent only when the scope changes; a rollback (of a transaction or
to a savepoint) may undo it, so the remembered value is forgotten then and sent again before the next query.
It is sent in front of the statement, in the same string and round trip (Django's client-side cursors use the
simple query protocol, which runs the two in order), and apart only where that cannot be (executemany, a
server-side cursor, a composed statement).

Statements run under `prepared_statements()` are sent as prepared statements of the connection: the first time a
statement's text runs on a connection, `PREPARE <name> AS <text>` goes in front of its `EXECUTE <name>(<values>)`,
in the same string and round trip; afterwards only the EXECUTE. PostgreSQL then parses, analyses and rewrites the
statement once per connection, and plans it once when a generic plan is as good as a custom one (its choice:
plan_cache_mode "auto"). Planning was most of PostgreSQL's CPU for the short statements every request sends
(docs/BENCHMARKS.md, "The fixed cost of a QIDO-RS request, prepared statements"). The values are still bound by the
client (literals of the EXECUTE) and the scope's setting still rides in front, so nothing costs a round trip more.
A prepared statement lives with its server session, so what is prepared is remembered on the driver's connection
(a pooled connection keeps its statements); the names carry a random part of their own connection, so a server
session handed on without a reset (PgBouncer with no server_reset_query) never finds the name taken.

One way to send fewer round trips, for the statements every request sends (docs/BENCHMARKS.md, "The fixed cost of a
DICOMweb request, in round trips"): `prepared_together()` sends several prepared statements in one string and
returns each one's rows (the training gate's and the permissions' statements of one decision). (A read's audit event
needs none: it is one statement of its own, audit.services.)
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, cast

import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.postgresql import base, operations

from tenants.scoping import DATABASE_SETTING, database_scope

SET_SCOPE = "SELECT set_config(%s, %s, false)"
# Django's own transaction statements read no table: they pass as they are (and one of them may be the rollback
# of an aborted transaction, where nothing else may run).
TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")
# Statements PostgreSQL refuses inside a transaction block, which a string of several statements is (its implicit
# transaction): the scope's setting goes in front of them as a statement of its own. Without this, `pytest
# --create-db` failed ("CREATE DATABASE cannot run inside a transaction block") once a failed statement had left the
# server's setting unknown.
_ALONE = re.compile(
    r"\s*(?:(?:CREATE|DROP)\s+DATABASE\b|VACUUM\b|ALTER\s+SYSTEM\b|(?:CREATE|DROP|REINDEX)\b[^;]*\bCONCURRENTLY\b)",
    re.IGNORECASE,
)
_SCOPE_PREFIX = "SELECT set_config('" + DATABASE_SETTING + "', {}, false); "


def _literal(scope: str) -> str:
    """The scope as an SQL string literal, with no `%` (the statement after it may be formatted with parameters):
    a scope is "", a tenant's id or "platform" (tenants.scoping); anything else is refused."""
    if not (scope == "" or scope.isdigit() or scope.isidentifier()):
        raise ValueError(f"Not a database scope: {scope!r}")
    return f"'{scope}'"


_SCOPE_SENT = re.compile(r"(^|; )SELECT set_config\('" + re.escape(DATABASE_SETTING) + r"', '[^']*', false\); ")

_PREPARING: ContextVar[bool] = ContextVar("enclave_prepared_statements", default=False)


# At most this many statements prepared per connection; a statement past them runs as it is (a search's statement
# differs with its keys, so their number has no bound of its own).
PREPARED_MAX = 256
# What psycopg's client-side cursor takes for a placeholder: %s, %(name)s, and %% for a percent sign.
_PLACEHOLDER = re.compile(r"%(?:\(([^)]*)\))?(.)")
_PREPARED_MARK = "EXECUTE enclave_"


@contextmanager
def prepared_statements() -> Iterator[None]:
    """Statements run in this block (one statement each, with parameters, on Django's client-side cursor) are sent
    as prepared statements of their connection (see the module's docstring). For statements that run on every
    request; a statement whose parameter types PostgreSQL cannot infer from their place must not run in it."""
    token = _PREPARING.set(True)
    try:
        yield
    finally:
        _PREPARING.reset(token)


def where_all(where: Any, leaf: Callable[[Any, Any], bool]) -> bool:
    """Whether every condition of a query's `where` (and of the subqueries it holds) passes: a nested node by its own
    conditions; a lookup against a subquery when it is `=` or IN and the subquery's conditions pass; a lookup whose
    value is an expression never (its shape is not fixed); any other condition by `leaf(condition, node)`, `node`
    being the WhereNode that holds it. The one walk for the questions asked of a statement's conditions before
    deciding how to prepare it (`_equalities_only` here, studies.selectors.matching's generic plan)."""
    from django.db.models.lookups import Lookup
    from django.db.models.sql import Query
    from django.db.models.sql.where import WhereNode

    for child in where.children:
        if isinstance(child, WhereNode):
            if not where_all(child, leaf):
                return False
        elif isinstance(child, Lookup) and isinstance(child.rhs, Query):
            if child.lookup_name not in ("exact", "in") or not where_all(child.rhs.where, leaf):
                return False
        elif (isinstance(child, Lookup) and hasattr(child.rhs, "resolve_expression")) or not leaf(child, where):
            return False
    return True


def _equalities_only(where: Any) -> bool:
    """Whether every condition of `where` (and of the subqueries it holds) is `column = value`, `column IS [NOT]
    NULL` or `column IN (subquery)`: a statement whose shape is fixed and whose best plan is the same for every
    value. Anything else (a range, a list of values, a pattern, an expression) says no."""
    from django.db.models.lookups import Exact, IsNull

    return where_all(where, lambda child, _node: isinstance(child, Exact | IsNull))


def prepared_if_fixed(query: Any) -> AbstractContextManager[None]:
    """`prepared_statements()` for a queryset's statement (`qs.query`) whose conditions are all equalities (see
    `_equalities_only`): PostgreSQL's one generic plan then serves every value. A range, a pattern or a list of
    values is planned for its own values every time: the best plan of a one-year date range or of `A*` is not
    that of a single day or of `MARTIN*`."""
    return prepared_statements() if _equalities_only(query.where) else nullcontext()


class _Prepared:
    """What one driver connection has prepared: the statement text (with $n placeholders) -> its name."""

    __slots__ = ("names", "prefix", "sent")

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.prefix = f"enclave_{secrets.token_hex(4)}_"
        self.sent = 0


def _prepared_of(raw_connection: Any) -> _Prepared:
    prepared = getattr(raw_connection, "_enclave_prepared", None)
    if prepared is None:
        prepared = raw_connection._enclave_prepared = _Prepared()
    return prepared


def _as_prepared(sql: str, params: Any) -> tuple[str, str] | None:
    """`sql` with its placeholders numbered ($1, $2 ...: the body of a PREPARE, percent signs still doubled for the
    client's formatting of the whole string) and the placeholders of the EXECUTE's values, or None when it cannot
    be sent so (no parameters, a placeholder psycopg formats otherwise, a `$` already in the text)."""
    if not params:
        return None
    named = isinstance(params, dict)
    converted = _numbered(sql, named)
    if converted is None or (not named and converted[2] != len(params)):
        return None
    return converted[0], converted[1]


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str, named: bool) -> tuple[str, str, int] | None:
    """`_as_prepared` of one text, worked out once: (body, the EXECUTE's placeholders, how many values)."""
    if "$" in sql:
        return None
    order: list[str] = []
    numbers: dict[str, int] = {}
    failed = False

    def numbered(match: re.Match[str]) -> str:
        nonlocal failed
        name, kind = match.group(1), match.group(2)
        if kind == "%" and name is None:
            return "%%"
        if kind != "s" or (name is None) == named:
            failed = True
            return ""
        if name is None:
            order.append("%s")
            return f"${len(order)}"
        if name not in numbers:
            numbers[name] = len(order) + 1
            order.append(f"%({name})s")
        return f"${numbers[name]}"

    body = _PLACEHOLDER.sub(numbered, sql)
    if failed or not order:
        return None
    return body, ", ".join(order), len(order)


_NAMED = re.compile(r"%\(([^)]*)\)s")


def _ordered(arguments: str, params: Any) -> list[Any]:
    """The values of an EXECUTE's `arguments` (`_numbered`'s placeholders) in their order, from `params`."""
    if isinstance(params, dict):
        return [params[name] for name in _NAMED.findall(arguments)]
    return list(params)


def prepared_together(statements: list[tuple[str, Any]], using: str = DEFAULT_DB_ALIAS) -> list[list[tuple[Any, ...]]]:
    """Each statement's rows, the statements sent together in one round trip (`DatabaseWrapper.prepared_together`)."""
    return cast("DatabaseWrapper", connections[using]).prepared_together(statements)


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor: Any, sql: Any, params: Any) -> Any:
        """The statement as its caller wrote it: the scope's setting in front of it is the backend's own, as it was
        when it was sent apart (query logs and CaptureQueriesContext never showed it), and a prepared statement
        shows as the statement with its values, as it would have been sent unprepared."""
        shown = getattr(cursor, "enclave_shown", None)
        if shown is not None:  # statements sent together (prepared_together): each as it would be sent alone
            return "; ".join(psycopg.ClientCursor(cursor.connection).mogrify(text, values) for text, values in shown)
        query = super().last_executed_query(cursor, sql, params)
        if isinstance(query, str) and _PREPARED_MARK in query and isinstance(sql, str):
            # A cursor of its own: mogrify() resets the cursor's adaptation state, and with it the results
            # not fetched yet.
            return psycopg.ClientCursor(cursor.connection).mogrify(sql, params)
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
        if isinstance(sql, str) and sql.startswith(TRANSACTION_CONTROL):
            return execute(sql, params, many, context)
        raw = getattr(context.get("cursor"), "cursor", None)
        pipeline = self.connection._pipeline
        batched = not many and isinstance(sql, str) and isinstance(raw, psycopg.ClientCursor) and not pipeline
        batched = batched and not _ALONE.match(sql)
        if batched and _PREPARING.get():
            return self._prepared_execute(execute, sql, params, context, raw, scope)
        if scope == self.enclave_scope_sent:
            return execute(sql, params, many, context)
        if not batched:
            with self.wrap_database_errors, self.connection.cursor() as cursor:
                cursor.execute(SET_SCOPE, (DATABASE_SETTING, scope))
            self.enclave_scope_sent = scope
            return execute(sql, params, many, context)
        return self._scope_in_front(execute, sql, params, context, raw, scope, skipped=0)

    def _scope_in_front(
        self, execute: Any, sql: str, params: Any, context: dict[str, Any], raw: Any, scope: str, *, skipped: int
    ) -> Any:
        """`sql` with the scope's setting in front of it when the server's differs, in the same round trip (the
        simple query protocol of Django's client-side cursors runs both in order, as one implicit transaction
        outside a transaction: if the statement fails, the setting is undone with it, so it counts as sent only
        once both have run); the cursor then on the result of the last statement, as if it had been sent alone
        (`skipped`: statements of `sql` itself before its last)."""
        if scope == self.enclave_scope_sent:
            result = execute(sql, params, False, context)
        else:
            self.enclave_scope_sent = None
            result = execute(_SCOPE_PREFIX.format(_literal(scope)) + sql, params, False, context)
            skipped += 1
            self.enclave_scope_sent = scope
        for _ in range(skipped):
            raw.nextset()
        return result

    def _prepared_execute(
        self, execute: Any, sql: str, params: Any, context: dict[str, Any], raw: Any, scope: str
    ) -> Any:
        """`sql` as a prepared statement of the connection (`prepared_statements`): EXECUTE, with the PREPARE in
        front of it the first time. PREPARE is not undone by a rollback, so a statement counts as prepared once its
        PREPARE has run, even when the EXECUTE after it failed; when the PREPARE itself may have failed (a
        statement PostgreSQL refused, or a transaction already aborted) its name is dropped and another is taken
        next time (names are never reused)."""
        converted = _as_prepared(sql, params)
        if converted is None:
            return self._scope_in_front(execute, sql, params, context, raw, scope, skipped=0)
        prepared = _prepared_of(self.connection)
        body, arguments = converted
        name = prepared.names.get(body)
        if name is not None:
            try:
                return self._scope_in_front(
                    execute, f"EXECUTE {name}({arguments})", params, context, raw, scope, skipped=0
                )
            except Exception as exc:
                state = getattr(exc.__cause__, "sqlstate", None) or getattr(exc, "sqlstate", None)
                if state not in ("26000", "0A000"):
                    raise
                # The server session lost its statements (26000: DISCARD ALL, DEALLOCATE) or this one may not keep
                # its plan (0A000: a table changed under it): prepared anew, at once when nothing was undone with
                # it (outside a transaction the failed EXECUTE was all of its implicit one).
                if state == "26000":
                    prepared.names.clear()
                prepared.names.pop(body, None)
                if self.in_atomic_block:
                    raise
        if len(prepared.names) >= PREPARED_MAX:
            return self._scope_in_front(execute, sql, params, context, raw, scope, skipped=0)
        prepared.sent += 1
        name = f"{prepared.prefix}{prepared.sent}"
        statement = f"PREPARE {name} AS {body}; EXECUTE {name}({arguments})"
        try:
            result = self._scope_in_front(execute, statement, params, context, raw, scope, skipped=1)
        except Exception as exc:
            state = getattr(exc.__cause__, "sqlstate", None) or getattr(exc, "sqlstate", None) or ""
            if not state.startswith(("42", "25", "0A")):  # the EXECUTE failed, after its PREPARE had run
                prepared.names[body] = name
            raise
        prepared.names[body] = name
        return result

    def prepared_together(self, statements: list[tuple[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """Each statement's rows, the statements (one each, with parameters, as `prepared_statements()` takes
        them) run as prepared statements of this connection in one string and round trip, in order: `EXECUTE a(..);
        EXECUTE b(..)`, with the scope's setting in front as for any statement. One they make a single implicit
        transaction outside a transaction (one snapshot); an error in any stops them all. A statement not yet
        prepared on this connection sends them one by one instead (PREPARE and EXECUTE each, as
        `prepared_statements()` does), so a first use costs a round trip per statement once per connection."""
        self.ensure_connection()
        prepared = _prepared_of(self.connection)
        parts: list[str] = []
        values: list[Any] = []
        for sql, params in statements:
            converted = _as_prepared(sql, params)
            name = prepared.names.get(converted[0]) if converted is not None else None
            if converted is None or name is None:
                return self._prepared_one_by_one(statements)
            parts.append(f"EXECUTE {name}({', '.join(['%s'] * len(_ordered(converted[1], params)))})")
            values.extend(_ordered(converted[1], params))
        token = _PREPARING.set(False)  # the string is sent as it is, not prepared itself
        try:
            with self.cursor() as cursor:
                cursor.cursor.enclave_shown = statements  # what query logs show (DatabaseOperations)
                try:
                    cursor.execute("; ".join(parts), values)
                except DatabaseError as exc:
                    state = getattr(exc.__cause__, "sqlstate", None)
                    if state not in ("26000", "0A000"):
                        raise
                    # As `_prepared_execute`: the session lost its statements, or one may not keep its plan.
                    prepared.names.clear()
                    if self.in_atomic_block:
                        raise
                    return self._prepared_one_by_one(statements)
                rows = []
                for index in range(len(statements)):
                    if index:
                        cursor.cursor.nextset()
                    rows.append(cursor.fetchall())
                return rows
        finally:
            _PREPARING.reset(token)

    def _prepared_one_by_one(self, statements: list[tuple[str, Any]]) -> list[list[tuple[Any, ...]]]:
        rows = []
        with prepared_statements(), self.cursor() as cursor:
            for sql, params in statements:
                cursor.execute(sql, params)
                rows.append(cursor.fetchall())
        return rows

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
