"""Structured JSON-lines logs with stable keys, and nothing else.

Every line is one JSON object with the keys `ts` (UTC, milliseconds), `level`, `logger` and
`event` (a fixed phrase, never formatted with data), then the fields the caller named. A field
never overwrites those four (it is written as `<name>_` instead). The fields keep their names
across the engine:

    correlation_id  given to a webhook when it is accepted; stored with the received event and
                    every message rendered from it, so one booking change can be followed from
                    the webhook to the EHR's ACK (`calhl7 message ID` and the audit show it too)
    event_id        the stored webhook;  message_id, control_id (MSH-10), message_type
    source, trigger, channel, destination, outcome, ack_code, attempt, reason, error

Levels: DEBUG follows every step of a booking (webhook accepted, event processed, message
queued); INFO notes each message the EHR acknowledged, retries and unusual but handled things
(a duplicate webhook); WARNING what an analyst will have to look at (quarantine, dead letter,
refused webhooks, connection failures); ERROR what the engine could not do.

PHI never reaches a log line: callers log ids (event, message, control id, correlation id),
codes and counts, never names, dates of birth, phones, emails, MRNs, booking uids, reasons
written by people, the EHR's own words or message bodies. Tracebacks are logged as the
exception type and the frames' locations, not its message, because validation errors quote
the values they rejected. tests/engine/test_logs.py runs the demo at DEBUG and checks every line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}
BASE_KEYS = ("ts", "level", "logger", "event")
# Third-party loggers that talk about requests at INFO/DEBUG; ours say what matters.
_QUIET = ("uvicorn.access", "httpx", "httpcore", "hpack", "asyncio")


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool | None):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float | bool | None)
                                               for v in value):
        return list(value)
    return str(value)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if record.exc_info and not record.name.startswith("calhl7"):
            # another library's error text (asyncio's "Task exception was never retrieved",
            # say) goes on to quote the exception, which may hold patient data: first line only
            line["event"] = line["event"].split("\n", 1)[0]
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[f"{key}_" if key in BASE_KEYS else key] = _plain(value)
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
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's error logger may quote request lines: keep its handlers ours
    for name in ("uvicorn", "uvicorn.error", "asyncio"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
