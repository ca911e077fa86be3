"""Every log record of every test, formatted as production formats it (settings.LOGGING's filters and JSON
formatter), is checked for what must never be in a plain log (SECURITY.md E9, G12): a bearer token, device token,
enrolment code or invitation link, and the synthetic patient every fixture ingests by default
(studies.dicom.synthetic). An autouse fixture of tests/conftest.py installs the guard for each test and fails the
test's teardown on a leak, which works the same under xdist. tests/portal/test_logs.py runs a sample with patients
and secrets of its own.
"""

from __future__ import annotations

import logging
import re

from portal.log_filters import JsonFormatter, RequestIdFilter, StripQueryStringFilter

# A token as issued: prefix and at least 16 characters of token_urlsafe (the masked form keeps only the prefix).
SECRET_PATTERN = re.compile(r"\b(?:enc|encd|ence|inv)_[A-Za-z0-9_\-]{16,}")
# studies.dicom.synthetic.make_instance's default patient.
DEFAULT_PATIENT = ("SYNTHETIC^PATIENT", "SYN0001")
# Loggers that do not propagate to the root (settings.LOGGING): the guard listens to them as well.
NON_PROPAGATING = ("django.request", "django.server")


class LogGuard(logging.Handler):
    """Formats each record it sees as the console handler would, and keeps the lines."""

    def __init__(self, *, forbidden: tuple[str, ...] = DEFAULT_PATIENT) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.addFilter(StripQueryStringFilter())
        self.addFilter(RequestIdFilter())
        self.forbidden = tuple(f.upper() for f in forbidden)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is the logging call's bug, not a leak
            self.handleError(record)

    def install(self) -> LogGuard:
        for name in ("", *NON_PROPAGATING):
            logging.getLogger(name).addHandler(self)
        return self

    def remove(self) -> None:
        for name in ("", *NON_PROPAGATING):
            logging.getLogger(name).removeHandler(self)

    def text(self) -> str:
        return "\n".join(self.lines)

    def leaks(self) -> list[str]:
        found = []
        for line in self.lines:
            upper = line.upper()
            if SECRET_PATTERN.search(line) or any(f in upper for f in self.forbidden):
                found.append(line)
        return found
