"""The Django cache on Redis, for emergency mode (SECURITY.md B10): Redis holds only counters and hints (rate
limits, DRF throttles, alert de-duplication), never a record, so a Redis that is down must not take the portal down
with it. Every operation that cannot reach Redis answers as if the key were absent (`get` gives the default,
`add` says it stored, `incr` raises ValueError as for a missing key), so that rate limits are not counted but
viewing, break-glass, authentication (sessions and lockouts are in PostgreSQL) and auditing go on. Each outage is
logged and raises a SecurityAlert ("rate limits not enforced") at most once per ALERT_SECONDS per process.

Connections time out after CACHE_REDIS_TIMEOUT_SECONDS, so that a Redis that does not answer costs a request
that long, not a hang. What else uses Redis degrades on its own: the ingestion quota's counter raises, so ingestion
stops while Redis is down (emergency mode is read-only), and e-mails queued while the broker is down are logged as
not sent (the alerts they announce stay on the dashboard).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.db import DatabaseError, transaction
from django.db.transaction import TransactionManagementError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from audit.events import EventType, Outcome
from audit.models import SecurityAlert
from audit.services import security_alert_raise

logger = logging.getLogger(__name__)

DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
ALERT_SECONDS = 300.0
_state = {"alerted_at": -ALERT_SECONDS}
_lock = threading.Lock()


def _uncounted() -> None:
    return None


def _given_back(pool: Any, connection: Any, *, broken: bool = False) -> None:
    """A connection borrowed from redis-py's pool given back; closed first when a command on it failed part-way
    (an answer may still be on its way), as redis-py's own client does."""
    if broken:
        connection.disconnect()
    pool.release(connection)


def _redis_down(operation: str, exc: BaseException) -> None:
    logger.warning("cache unreachable (%s: %s): rate limits are not counted", operation, type(exc).__name__)
    now = time.monotonic()
    with _lock:
        if now - _state["alerted_at"] < ALERT_SECONDS:
            return
        _state["alerted_at"] = now
    try:
        with transaction.atomic():
            security_alert_raise(
                kind="cache_unavailable",
                summary="Redis is unreachable: rate limits and throttles are not enforced until it is back.",
                event=EventType.CACHE_UNAVAILABLE, severity=SecurityAlert.Severity.HIGH,
                outcome=Outcome.SERIOUS_FAILURE, extra={"operation": operation, "error": type(exc).__name__},
            )  # fmt: skip
    except (DatabaseError, TransactionManagementError):  # e.g. inside a transaction that already failed
        logger.exception("the cache-unavailable alert could not be recorded")


# KEYS: the counters; ARGV: timeout and limit of each, in turn. INCR and EXPIRE each key, and stop after the first
# that is over its limit (the later ones are not counted, as when the caller counted key by key).
_COUNT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[2 * i - 1])
  counts[i] = count
  if count > tonumber(ARGV[2 * i]) then break end
end
return counts
"""


class _ReusedClient(RedisCacheClient):
    """Django's client makes a new `redis.Redis` for every operation, and redis-py's constructor fills a table of
    some 170 reply callbacks each time (about a third of the CPU of a rate-limit check). One `redis.Redis` per
    connection pool is kept instead: it holds no connection of its own (each command borrows one from the pool),
    so it is as safe to share as the pool is. Django's cache handler already gives each thread its own cache
    object, pools and so these clients."""

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        clients: dict[int, Any] = self.__dict__.setdefault("_clients", {})
        client = clients.get(id(pool))
        if client is None or client.connection_pool is not pool:
            client = clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client


class EmergencyRedisCache(RedisCache):
    """RedisCache that answers "absent" instead of failing while Redis is unreachable (see the module)."""

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _ReusedClient

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        try:
            return super().get(key, default, version)
        except DOWN as exc:
            _redis_down("get", exc)
            return default

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        try:
            return super().get_many(keys, version)
        except DOWN as exc:
            _redis_down("get_many", exc)
            return {}

    def has_key(self, key: Any, version: Any = None) -> bool:
        try:
            return super().has_key(key, version)
        except DOWN as exc:
            _redis_down("has_key", exc)
            return False

    def add(self, key: Any, value: Any, timeout: Any = 300, version: Any = None) -> bool:
        try:
            return super().add(key, value, timeout, version)
        except DOWN as exc:
            _redis_down("add", exc)
            return True

    def set(self, key: Any, value: Any, timeout: Any = 300, version: Any = None) -> None:
        try:
            super().set(key, value, timeout, version)
        except DOWN as exc:
            _redis_down("set", exc)

    def set_many(self, data: Any, timeout: Any = 300, version: Any = None) -> list[Any]:
        try:
            return super().set_many(data, timeout, version)
        except DOWN as exc:
            _redis_down("set_many", exc)
            return list(data)

    def touch(self, key: Any, timeout: Any = 300, version: Any = None) -> bool:
        try:
            return super().touch(key, timeout, version)
        except DOWN as exc:
            _redis_down("touch", exc)
            return False

    def delete(self, key: Any, version: Any = None) -> bool:
        try:
            return super().delete(key, version)
        except DOWN as exc:
            _redis_down("delete", exc)
            return False

    def delete_many(self, keys: Any, version: Any = None) -> None:
        try:
            super().delete_many(keys, version)
        except DOWN as exc:
            _redis_down("delete_many", exc)

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        try:
            return super().incr(key, delta, version)
        except DOWN as exc:
            _redis_down("incr", exc)
            raise ValueError("Key not found: the cache is unreachable.") from exc

    def incr_counters(self, counters: list[tuple[str, int, int]]) -> list[int] | None:
        """Count one more on each (key, timeout, limit) counter, in order, until one passes its limit; the counts,
        one per counter counted (the last one over its limit if one is). One round trip: a Lua script, so the
        counting is atomic and stops exactly where counting key by key would. A missing key starts at 1; its
        timeout is set again on every count (a counter named by its window lives at most `timeout` past the
        window's last request). None while Redis is unreachable: nothing was counted (see the module)."""
        return self.incr_counters_sent(counters)()

    def incr_counters_sent(self, counters: list[tuple[str, int, int]]) -> Callable[[], list[int] | None]:
        """`incr_counters` in two halves: the script is sent now, and its answer read when the function returned is
        called, so that what the caller does in between overlaps the round trip (portal.web.limits: a request's
        rate limit). That function must be called once, on the thread that sent (it gives the connection back to
        the pool). Waiting for the answer is bounded by the socket's timeout, as a command's reply is; Redis
        unreachable when sending or reading: None, as `incr_counters`."""
        if not counters:
            return list
        keys = [self.make_and_validate_key(key) for key, _, _ in counters]
        args = [value for _, timeout, limit in counters for value in (int(timeout), int(limit))]
        try:
            client = self._cache.get_client(write=True)
            script = self.__dict__.get("_count_script")
            if script is None:  # its SHA-1 once per cache object; EVALSHA, loaded again if the server lost it
                script = self.__dict__["_count_script"] = client.register_script(_COUNT_SCRIPT)
            pool = client.connection_pool
            connection = pool.get_connection()
        except DOWN as exc:
            _redis_down("incr_counters", exc)
            return _uncounted
        try:
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except DOWN as exc:
            _given_back(pool, connection, broken=True)
            _redis_down("incr_counters", exc)
            return _uncounted

        def answer() -> list[int] | None:
            try:
                replies = connection.read_response()
            except NoScriptError:  # the server lost the script (a restart, SCRIPT FLUSH): loaded and run again
                _given_back(pool, connection)
                try:
                    replies = script(keys=keys, args=args, client=client)
                except DOWN as exc:
                    _redis_down("incr_counters", exc)
                    return None
            except DOWN as exc:
                _given_back(pool, connection, broken=True)
                _redis_down("incr_counters", exc)
                return None
            except BaseException:
                _given_back(pool, connection, broken=True)
                raise
            else:
                _given_back(pool, connection)
            return [int(count) for count in replies]

        return answer

    def clear(self) -> None:
        try:
            super().clear()
        except DOWN as exc:
            _redis_down("clear", exc)
