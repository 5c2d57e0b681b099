"""Log lines: one JSON object per line on stderr (or plain text), each with its request's id.

One logging configuration serves every logger of the process, ours, Litestar's and uvicorn's:
`giftledger serve` hands it to uvicorn (so uvicorn's own start-up lines come out in the same
format, in the parent and in every worker) and create_app hands it to Litestar (so a process
started any other way gets it too). Redaction is not done here: api/redaction.py redacts every
record's message and arguments as the record is created, before any formatter sees it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar.logging.config import LoggingConfig

from api.settings import Settings

# The id of the request being served, for every log record made while serving it.
REQUEST_ID: ContextVar[str | None] = ContextVar("giftledger_request_id", default=None)
# Set by api/tracing.py when tracing is on: the current (trace_id, span_id) as hex, or None.
current_trace_ids: Callable[[], tuple[str, str] | None] | None = None
# Access log records carry their structured fields (method, path, status...) in this attribute.
FIELDS = "giftledger_fields"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

_json = msgspec.json.Encoder()


class ContextFilter(logging.Filter):
    """Stamps each record with the request id (and trace ids) of the context that logged it.

    A handler filter, so it runs in the thread and context that made the record: the handlers
    here write synchronously (a queue would hand records to another thread, and a line per
    request is cheaper written than queued).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        if current_trace_ids is not None and not hasattr(record, "trace_id"):
            ids = current_trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class JsonFormatter(logging.Formatter):
    """timestamp, level, logger, message, request_id, then any fields the record carries."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            line["trace_id"] = trace_id
            line["span_id"] = getattr(record, "span_id", None)
        fields = getattr(record, FIELDS, None)
        if fields:
            line.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return _json.encode(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes, like logging's last resort: a
    stream bound at configuration time may be closed by then (pytest's capture, or a library's
    exit hook logging after it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def _stderr_handler() -> dict[str, Any]:
    return {"class": "api.logs.StderrHandler", "formatter": "giftledger", "filters": ["context"]}


def _logging_parts(settings: Settings) -> dict[str, Any]:
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    level = settings.log_level
    own = {"handlers": ["console"], "level": level, "propagate": False}
    return {
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"giftledger": {"()": formatter}},
        # "queue_listener" is the name of Litestar's default handler; defined here as a plain
        # stderr handler, no queue thread is started (and an unbounded queue is no limit).
        "handlers": {"console": _stderr_handler(), "queue_listener": _stderr_handler()},
        "loggers": {
            "litestar": own,
            "uvicorn": own,
            "uvicorn.error": {"level": level},
            # api/request_context.py writes the access log, with the route template in place
            # of the raw path and with the request id; uvicorn's own would repeat each request.
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            "giftledger.access": {"level": "INFO" if settings.access_log else "CRITICAL"},
        },
        "root": {"handlers": ["console"], "level": level},
    }


def logging_dict(settings: Settings) -> dict[str, Any]:
    """A logging.config.dictConfig dictionary, the form uvicorn's `log_config` takes."""
    return {"version": 1, "disable_existing_loggers": False, **_logging_parts(settings)}


def litestar_logging_config(settings: Settings) -> LoggingConfig:
    # The standard library's logging even where picologging is installed: the redaction hook
    # and the handler classes above are the standard library's.
    return LoggingConfig(logging_module="logging", **_logging_parts(settings))
