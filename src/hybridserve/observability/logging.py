"""Structured JSON logs: one object per line, with the request id where there is one.

Every line goes through :func:`hybridserve.urls.masked_url`: hybridserve's own messages name
backends masked already, and this keeps a password out of the text of a driver's exception
or a traceback too."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import orjson

from hybridserve.urls import masked_url

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        if message:
            out["msg"] = message
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return masked_url(orjson.dumps(out, default=str).decode())


class PlainFormatter(logging.Formatter):
    """Human-readable lines (``configure(json=False)``), masked like the JSON ones."""

    def format(self, record: logging.LogRecord) -> str:
        return masked_url(super().format(record))


class _JsonLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs; its stream also takes batched access lines."""


def stream_for(logger: logging.Logger) -> IO[bytes] | None:
    """The byte stream behind ``logger`` when :func:`configure` set it up for JSON lines."""
    handlers = logger.handlers or (logger.parent.handlers if logger.parent else [])
    if len(handlers) == 1 and isinstance(handlers[0], _JsonLines):
        h = handlers[0]
        if isinstance(h.formatter, JsonFormatter):
            buffer: IO[bytes] | None = getattr(h.stream, "buffer", None)
            return buffer
    return None


def configure(level: str = "info", *, json: bool = True) -> None:
    """Send hybridserve's (and uvicorn's) logs to stderr, as JSON lines by default."""
    handler = _JsonLines(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json
        else PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for name in ("hybridserve", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
