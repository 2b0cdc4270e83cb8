"""dualbladed.logs: JSON lines carry bound context, payload bytes never reach the log."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from dualbladed.errors import InvalidArgument
from dualbladed.logs import bound, configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("json", "DEBUG", stream=buf)
    yield buf
    root.handlers[:], root.level = saved
    structlog.contextvars.clear_contextvars()


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_bound_context(stream: io.StringIO) -> None:
    log = logging.getLogger("dualbladed.test")
    with bound(session="s-1", tenant="llama", rpc="Batch"):
        log.info("batch done", extra={"ops": 3})
        structlog.get_logger("dualbladed.test").info("structlog event", n=1)
    log.info("after the call")
    first, second, third = lines(stream)
    for rec in (first, second):
        assert (rec["session"], rec["tenant"], rec["rpc"]) == ("s-1", "llama", "Batch")
    assert first["event"] == "batch done" and first["ops"] == 3 and first["level"] == "info"
    assert first["logger"] == "dualbladed.test" and "timestamp" in first
    assert second["n"] == 1
    assert "session" not in third and "tenant" not in third


def test_bound_restores_outer_values_on_error(stream: io.StringIO) -> None:
    log = logging.getLogger("dualbladed.test")
    with bound(tenant="outer"):
        with pytest.raises(RuntimeError), bound(tenant="inner", rpc="Put"):
            raise RuntimeError("boom")
        log.info("back")
    (rec,) = lines(stream)
    assert rec["tenant"] == "outer" and "rpc" not in rec


def test_payload_bytes_never_logged(stream: io.StringIO) -> None:
    secret = b"TOP-SECRET-KV-PAYLOAD" * 4
    logging.getLogger("x").info("put", extra={"payload": secret})
    structlog.get_logger("x").info("get", data=bytearray(secret), view=memoryview(secret))
    text = stream.getvalue()
    assert "TOP-SECRET" not in text
    put, get = lines(stream)
    assert put["payload"] == f"<{len(secret)} bytes>"
    assert get["data"] == get["view"] == f"<{len(secret)} bytes>"


def test_exceptions_are_structured(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad extent")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (rec,) = lines(stream)
    assert rec["exception"][0]["exc_type"] == "ValueError"


def test_level_filters(stream: io.StringIO) -> None:
    configure_logging("console", "WARNING", stream=stream)
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    text = stream.getvalue()
    assert "shown" in text and "hidden" not in text


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgument, match="log_format"):
        configure_logging("xml")
    with pytest.raises(InvalidArgument, match="log_level"):
        configure_logging("json", "LOUD")


def test_logging_works_without_structlog(monkeypatch):
    """GPU machines may lack structlog: the daemon degrades to stdlib JSON with bound context."""
    import importlib
    import io
    import logging
    import sys

    import dualbladed.logs as logs_mod

    monkeypatch.setitem(sys.modules, "structlog", None)
    fallback = importlib.reload(logs_mod)
    try:
        assert fallback.structlog is None
        out = io.StringIO()
        fallback.configure_logging("json", "INFO", stream=out)
        with fallback.bound(session="s1", tenant="0/x"):
            logging.getLogger("t").info("hello", extra={"payload": b"secret-bytes"})
        line = json.loads(out.getvalue().splitlines()[-1])
        assert (line["event"], line["session"], line["tenant"]) == ("hello", "s1", "0/x")
        assert "secret-bytes" not in out.getvalue()
    finally:
        monkeypatch.undo()
        importlib.reload(logs_mod)
        logging.getLogger().handlers[:] = []
