"""Logging for dualbladed: structlog over the standard library, one line per event.

Every module logs with ``logging.getLogger(__name__)`` (or ``structlog.get_logger``); this module
routes both through one :class:`structlog.stdlib.ProcessorFormatter`, so grpc's and asyncio's
stdlib records get the same fields (timestamp, level, logger, bound context) as ours. Output goes
to stderr: under systemd that is journald, and ``json`` gives one object per line.

Per-call context (session, tenant, rpc, client pid) lives in contextvars. :func:`bound` binds it
for one call and restores the previous values in ``finally``, so a pool thread that serves the
next RPC never inherits the last one's identity. contextvars do not flow into
``ThreadPoolExecutor`` workers by themselves: submit ``contextvars.copy_context().run``.

Payload bytes are never logged: the ``_redact_buffers`` processor replaces every bytes-like value
(bytes, bytearray, memoryview) in an event with ``"<N bytes>"``. Log keys as ``key.hex()`` when a
key is needed; message ``%s`` arguments are formatted before processors run, so never pass
buffers there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from dualbladed.errors import InvalidArgument

FORMATS = ("json", "console")
_BUFFER_TYPES = (bytes, bytearray, memoryview)


def _redact_buffers(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, _BUFFER_TYPES):
            event[key] = f"<{memoryview(value).nbytes} bytes>"
    return event


def configure_logging(fmt: str = "json", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Install the daemon's logging on the root logger (idempotent: replaces its handlers)."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"log_format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise InvalidArgument(f"log_level: unknown level {level!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        _redact_buffers,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        final.append(structlog.processors.dict_tracebacks)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared, processors=[*final, renderer]
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


@contextmanager
def bound(**kv: Any) -> Iterator[None]:
    """Bind ``kv`` (e.g. ``session=..., tenant=..., rpc=...``) to every log line in this call.

    The previous values (or their absence) are restored on exit, even on error.
    """
    with structlog.contextvars.bound_contextvars(**kv):
        yield
