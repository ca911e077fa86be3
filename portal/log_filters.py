"""Keep query strings out of plain logs: QIDO-RS puts patient names there by design (SECURITY.md G12)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

_QUERY = re.compile(r"\?[^\s\"]*")


def _strip(value: Any) -> Any:
    return _QUERY.sub("?…", value) if isinstance(value, str) else value


class StripQueryStringFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = {key: _strip(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(_strip(a) for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _strip(record.msg)
        return True
