"""Structured logs: one JSON object per line in production, readable text on a terminal.

`exchange/settings/logging.py` picks the format (LOG_FORMAT=json|text). Every record
that reaches the handler passes `ContextFilter`, which stamps it with the process role
(web, matcher, pricefeed, celery-worker, celery-beat: `apps.ops.metrics.process_role`)
and with the fields of the current log context: `request_id` during an HTTP request
(`RequestIdMiddleware`), `task_id`/`task` during a Celery task, or anything a caller
adds with `with log_context(symbol=..., order_id=...):`. Fields passed as
`logger.info(..., extra={"symbol": ...})` are rendered too. The context lives in a
ContextVar, so it follows the request's thread or task and never leaks between them.

A JSON line: `{"timestamp": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger":
"apps.trading.matcher", "role": "matcher", "pid": 123, "message": "...", "symbol":
"BTCUSDT", "request_id": "..."}` plus `exc_info` (the formatted traceback) when there is
one.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

REQUEST_ID_HEADER = "X-Request-Id"
# An id from a proxy or client is kept when it looks like one (no spaces, quotes or
# control characters to smuggle into a log line); otherwise a fresh one is made.
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("log_context", default={})

# Attributes every LogRecord has; anything else on a record is an extra field (except
# `request`, the HttpRequest Django's loggers attach: its id is taken, not its repr).
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "role", "request"}


def log_context_push(**fields) -> contextvars.Token:
    """Add fields to every log line of this thread/task until `log_context_pop(token)`."""
    return _context.set({**_context.get(), **fields})


def log_context_pop(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**fields):
    token = log_context_push(**fields)
    try:
        yield
    finally:
        log_context_pop(token)


def log_context_fields() -> dict:
    return dict(_context.get())


def _process_role() -> str:
    try:
        from apps.ops.metrics import process_role
    except Exception:  # logging before the apps can be imported (settings errors)
        return "unknown"
    return process_role()


class ContextFilter(logging.Filter):
    """Stamps each record with the process role and the log context's fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _process_role()
        for key, value in _context.get().items():
            if not hasattr(record, key):  # an explicit extra= wins
                setattr(record, key, value)
        # Django logs 4xx responses after the middleware has returned, with the request.
        request_id = getattr(getattr(record, "request", None), "request_id", None)
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


def _extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, role, pid, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line = {
            "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "role": getattr(record, "role", None),
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The developer's line: time level logger: message (key=value of the extra fields)."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if not extras:
            return text
        suffix = " (" + ", ".join(f"{k}={v}" for k, v in extras.items()) + ")"
        head, sep, rest = text.partition("\n")  # after the message, before a traceback
        return head + suffix + sep + rest


class RequestIdMiddleware:
    """A request id per HTTP request: taken from a sane incoming X-Request-Id or made
    fresh, put in every log line of the request and in the response's X-Request-Id."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        with log_context(request_id=request_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response
