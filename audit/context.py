"""Who and where, for the current request or task: read by `audit_event_record` when the caller gives none.

Set by `portal.middleware.RequestIdMiddleware` for HTTP requests and by `task_context` for Celery tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class AuditContext:
    request_id: str = ""
    source_address: str | None = None
    system_principal: str = ""


_context: ContextVar[AuditContext] = ContextVar(
    "enclave_audit_context",
    default=AuditContext(),  # noqa: B039 -- frozen dataclass, immutable
)


def current() -> AuditContext:
    return _context.get()


def current_request_id() -> str | None:
    """django-auditlog's correlation id (AUDITLOG_CID_GETTER): our request id, so a field change and the audit
    event of the same request can be matched."""
    return _context.get().request_id or None


@contextmanager
def audit_context(**values: str | None) -> Iterator[AuditContext]:
    merged = AuditContext(**{**current().__dict__, **values})
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


AUDITLOG_MASKED = "[masked]"


def auditlog_mask(value: str) -> str:
    """django-auditlog's mask (AUDITLOG_MASK_CALLABLE) for patient identifiers and secrets: the whole value, not
    its first half as the library's default does. An empty value stays empty, so a diff still says whether a
    field was set or cleared."""
    return value if value in ("", "None") else AUDITLOG_MASKED
