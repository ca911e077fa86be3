"""Plain logs: one JSON object a line, with the request id, never patient data, tokens or forged lines.

- Query strings are cut (QIDO-RS puts patient names there by design, SECURITY.md G12).
- Bearer tokens, device tokens, enrolment codes and invitation links are masked wherever they appear.
- The request id (RequestIdMiddleware, or the task's audit context) is on every record of a request.
- CR, LF and other control characters of user-controlled text cannot start a line of their own (SECURITY.md E9): the
  JSON formatter escapes them, the plain one writes them as \\r, \\n, \\x1b.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from audit.context import current

_QUERY = re.compile(r"\?[^\s\"]*")
# The prefixes of tenants.services.tokens, tenants.services.invitations and devices.models: a marker that
# makes a leaked secret findable, here and in a secret scanner.
_SECRET = re.compile(r"\b(enc|encd|ence|inv)_[A-Za-z0-9_\-]{16,}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _strip(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return _SECRET.sub(lambda m: f"{m.group(1)}_…", _QUERY.sub("?…", value))


def neutralise(text: str) -> str:
    """`text` on one line: control characters written as escapes, never as themselves."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


class StripQueryStringFilter(logging.Filter):
    """Cuts query strings and masks tokens in the message, before any handler formats it. The message is merged
    with its arguments first: a query string in the format itself ("GET /x?q=%s") would otherwise lose its
    placeholder and leave an argument over."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # the logging call's own mistake: logging reports it when a handler formats the record
            return True
        record.msg = _strip(message)
        record.args = None
        return True


# A value quoted in a message: 'x', "x", with the escapes repr() writes.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


class DicomValueFilter(logging.Filter):
    """pydicom's logger (settings.LOGGING) quotes the value it complains about ("Invalid value for VR DA:
    '19310704x'.", 'Value "x" is not valid for elements with a VR of DS'): a patient's name, ID or birth date in a
    plain log. Each quoted value is withheld; which rule was broken stays. (pydicom's Python warnings of the same
    messages are not printed: studies.apps.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # the logging call's own mistake: logging reports it when a handler formats the record
            return True
        record.msg = _QUOTED.sub("[value withheld]", message)
        record.args = None
        return True


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (empty outside a request or task) to every record. Django logs a 4xx or 5xx answer after
    the middleware has returned, outside the request's audit context: its record carries the request instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            request = getattr(record, "request", None)
            record.request_id = current().request_id or str(getattr(request, "request_id", "") or "")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, request_id, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _strip(record.getMessage()),
            "request_id": getattr(record, "request_id", "") or current().request_id,  # set by RequestIdFilter
        }
        if record.exc_info:
            entry["exception"] = _strip(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = _strip(record.exc_text)
        return json.dumps(entry, ensure_ascii=True, default=str)


class PlainFormatter(logging.Formatter):
    """For a person at a terminal (LOG_FORMAT=plain): the same fields on one line, control characters escaped;
    only a traceback takes more lines, indented so that none of them looks like a record of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = neutralise(_strip(record.message))
        if not hasattr(record, "request_id"):
            record.request_id = current().request_id
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join("    " + neutralise(line) for line in _strip(super().formatException(ei)).splitlines())
