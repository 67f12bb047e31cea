"""Logging set-up: human lines by default, one JSON object per line with --log-json."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

# The Kafka request being handled, for log lines written while handling it.
request_context: contextvars.ContextVar[tuple[str | None, int] | None] = contextvars.ContextVar(
    "dray_request", default=None)


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = request_context.get()
        if ctx is not None:
            record.client_id, record.correlation_id = ctx
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("client_id", "correlation_id"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that are chatty at INFO.
    for name in ("botocore", "aiobotocore", "aioboto3", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
