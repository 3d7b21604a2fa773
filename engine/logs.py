"""Structured JSON-lines logs with stable keys, and nothing else.

PHI never reaches a log line: callers log ids (event, message, control id, correlation id),
codes and counts, never names, dates of birth, phones, emails, MRNs or message bodies.
Tracebacks are logged as the exception type and the frames' locations, not its message,
because validation errors quote the values they rejected.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _exc, tb = record.exc_info
            line["error_type"] = exc_type.__name__
            line["where"] = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                             for f in traceback.extract_tb(tb)][-5:]
        return json.dumps(line, ensure_ascii=False)


def configure(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's error logger may quote request lines: keep its handlers ours
    for name in ("uvicorn", "uvicorn.error", "asyncio"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
