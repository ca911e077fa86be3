"""Keep query strings out of plain logs: QIDO-RS puts patient names there by design (SECURITY.md G12)."""

from __future__ import annotations

import logging
import re

_QUERY = re.compile(r"\?[^\s\"]*")


class StripQueryStringFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(_QUERY.sub("?…", a) if isinstance(a, str) else a for a in record.args)  # type: ignore[assignment]
        if isinstance(record.msg, str):
            record.msg = _QUERY.sub("?…", record.msg)
        return True
