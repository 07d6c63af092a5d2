"""The batched access log: one JSON line per request, written together."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import pytest

from hybridserve.observability import logging as hs_logging
from hybridserve.observability.access import AccessLog


class _Text(io.TextIOWrapper):
    """A text stream over a bytes buffer, like ``sys.stderr``."""


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    raw = io.BytesIO()
    text = _Text(raw, encoding="utf-8", write_through=True)
    monkeypatch.setattr("sys.stderr", text)
    saved = {n: logging.getLogger(n).handlers[:] for n in ("hybridserve", "uvicorn.error")}
    hs_logging.configure("info")
    yield raw
    for name, handlers in saved.items():
        logging.getLogger(name).handlers[:] = handlers


def _only_ours() -> None:
    """Drop the capture handlers pytest adds during a test: the log has configure()'s only."""
    logger = logging.getLogger("hybridserve")
    logger.handlers[:] = [h for h in logger.handlers if isinstance(h, hs_logging._JsonLines)]


async def test_lines_are_buffered_then_written_as_json(configured: io.BytesIO) -> None:
    _only_ours()
    log = AccessLog(flush_interval=0.05)
    log.write("r1", "POST", "/v1/predict/fraud", 200, 1.25)
    log.write("r2", "POST", "/v1/predict/fraud", 503, 2.5)
    assert configured.getvalue() == b""  # nothing written per request
    await asyncio.sleep(0.15)
    lines = [orjson.loads(line) for line in configured.getvalue().splitlines()]
    assert [(x["request_id"], x["status"], x["ms"]) for x in lines] == [
        ("r1", 200, 1.25),
        ("r2", 503, 2.5),
    ]
    assert {x["logger"] for x in lines} == {"hybridserve.access"}
    assert all(x["level"] == "info" and x["path"] == "/v1/predict/fraud" for x in lines)


async def test_a_full_buffer_is_written_at_once_and_flush_writes_the_rest(
    configured: io.BytesIO,
) -> None:
    _only_ours()
    log = AccessLog(flush_interval=60, max_buffer=1000)
    for i in range(30):
        log.write(f"r{i}", "POST", "/v1/predict/fraud", 200, 1.0)
    written = len(configured.getvalue().splitlines())
    assert 0 < written < 30
    log.flush()
    assert len(configured.getvalue().splitlines()) == 30


def test_without_configure_lines_go_through_logging() -> None:
    logger = logging.getLogger("hybridserve")
    saved, logger.handlers[:] = logger.handlers[:], []
    seen: list[logging.LogRecord] = []
    catch = logging.Handler()
    catch.emit = seen.append  # type: ignore[method-assign]
    access = logging.getLogger("hybridserve.access")
    access.addHandler(catch)
    level, access.level = access.level, logging.INFO
    try:
        AccessLog().write("r9", "POST", "/v1/predict/x", 404, 0.5)
    finally:
        access.removeHandler(catch)
        access.level = level
        logger.handlers[:] = saved
    assert [(r.request_id, r.status) for r in seen] == [("r9", 404)]  # type: ignore[attr-defined]
