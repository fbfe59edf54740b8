"""The service's log lines: each carries the id of the request it was written for.

Log lines carry the method, path, status and messages written for the client; never an
image, an embedding or a key (the access log has no headers and no bodies).
`api.middleware.RequestId` sets `request_id` for the duration of each request.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (the current request's, or "-") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
SERVICE_LOGGERS = ("frtriton", "uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(json_lines: bool) -> None:
    """Send the service's and uvicorn's log records, with their request id, to stderr.

    Called by the app factory, after uvicorn has set up its own handlers, which this replaces.
    """
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in ("frtriton", "uvicorn") else []
        logger.propagate = name not in ("frtriton", "uvicorn")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
