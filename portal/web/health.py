"""The node's health (SECURITY.md E8): PostgreSQL and Redis reachable, and the offset between the application's
clock and PostgreSQL's. Audit timestamps are taken from the application's clock (audit_event_record), so a node
whose clock drifts writes a trail whose times cannot be trusted; past HEALTH_CLOCK_MAX_OFFSET_SECONDS the check
fails and raises a SecurityAlert on the platform's trail (at most one per HEALTH_ALERT_INTERVAL_SECONDS, however
often the probe asks). Nothing of any tenant is read or said."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.utils import timezone

from audit.context import audit_context
from audit.events import EventType
from audit.models import SecurityAlert
from audit.services import security_alert_raise

logger = logging.getLogger(__name__)

CLOCK_ALERT_KIND = "clock_offset"
PROBE_KEY = "enclave:health:probe"

# The answer's body (Health.as_dict) as a JSON Schema, for the OpenAPI document (portal.web.schema). It names
# the node's parts and its clock, never anything of a tenant.
HEALTH_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "fail"], "description": "ok: every part below is ok"},
        "database": {"type": "string", "enum": ["ok", "unreachable"], "description": "PostgreSQL"},
        "redis": {"type": "string", "enum": ["ok", "unreachable"], "description": "Redis (broker and cache)"},
        "clock": {
            "type": "string",
            "enum": ["ok", "off", "unknown"],
            "description": "the application's clock against PostgreSQL's; unknown when PostgreSQL did not answer",
        },
        "clock_offset_seconds": {
            "type": "number",
            "nullable": True,
            "description": "the application's clock minus PostgreSQL's; null when not measured",
        },
        "clock_offset_limit_seconds": {"type": "number", "description": "HEALTH_CLOCK_MAX_OFFSET_SECONDS"},
    },
    "required": ["status", "database", "redis", "clock", "clock_offset_seconds", "clock_offset_limit_seconds"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Health:
    database: bool
    redis: bool
    clock_offset: float | None  # seconds, the application's clock minus PostgreSQL's; None if not measured
    clock_limit: float

    @property
    def clock_ok(self) -> bool:
        return self.clock_offset is not None and abs(self.clock_offset) <= self.clock_limit

    @property
    def ok(self) -> bool:
        return self.database and self.redis and self.clock_ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "fail",
            "database": "ok" if self.database else "unreachable",
            "redis": "ok" if self.redis else "unreachable",
            "clock": "ok" if self.clock_ok else ("unknown" if self.clock_offset is None else "off"),
            "clock_offset_seconds": None if self.clock_offset is None else round(self.clock_offset, 6),
            "clock_offset_limit_seconds": self.clock_limit,
        }


def database_clock_offset(*, clock: Callable[[], float] = time.time) -> float:
    """The application's clock minus PostgreSQL's, in seconds: the database's clock_timestamp() against the
    midpoint of the application's readings just before and after the query (the round trip's halves cancel)."""
    with connection.cursor() as cursor:
        before = clock()
        cursor.execute("SELECT extract(epoch FROM clock_timestamp())")
        after = clock()
        (database_now,) = cursor.fetchone()
    return (before + after) / 2 - float(database_now)


def _redis_reachable() -> bool:
    try:
        cache.set(PROBE_KEY, "1", timeout=30)
        return cache.get(PROBE_KEY) == "1"
    except Exception:  # any failure of the cache's client means "unreachable" to a health probe
        return False


def _clock_alert(offset: float, limit: float) -> None:
    since = timezone.now() - timedelta(seconds=settings.HEALTH_ALERT_INTERVAL_SECONDS)
    if SecurityAlert.unscoped_objects.filter(tenant=None, kind=CLOCK_ALERT_KIND, raised_at__gte=since).exists():
        return
    with audit_context(system_principal="enclave:health"):
        security_alert_raise(
            kind=CLOCK_ALERT_KIND,
            summary=f"The application's clock is {offset:+.3f} s off PostgreSQL's (limit {limit:g} s): audit "
            "timestamps of this node cannot be trusted.",
            event=EventType.CLOCK_OFFSET_EXCEEDED,
            severity=SecurityAlert.Severity.HIGH,
            extra={"offset_seconds": round(offset, 6), "limit_seconds": limit},
        )


def health_check(*, clock: Callable[[], float] = time.time) -> Health:
    """Reachability of PostgreSQL and Redis, and the clock offset; raises the clock alert when it is past the
    limit (see the module's docstring). Never raises for an unreachable part: that is what it reports."""
    limit = float(settings.HEALTH_CLOCK_MAX_OFFSET_SECONDS)
    try:
        offset: float | None = database_clock_offset(clock=clock)
        database = True
    except DatabaseError:
        logger.warning("health: PostgreSQL is unreachable")
        offset, database = None, False
    redis = _redis_reachable()
    if not redis:
        logger.warning("health: Redis is unreachable")
    health = Health(database=database, redis=redis, clock_offset=offset, clock_limit=limit)
    if offset is not None and not health.clock_ok:
        logger.error("health: the clock is %+.3f s off PostgreSQL's (limit %g s)", offset, limit)
        try:
            _clock_alert(offset, limit)
        except DatabaseError:
            logger.exception("health: the clock alert could not be recorded")
    return health
