"""Logging for dualbladed: structlog over the standard library, one line per event.

Every module logs with ``logging.getLogger(__name__)`` (or ``structlog.get_logger``); this module
routes both through one :class:`structlog.stdlib.ProcessorFormatter`, so grpc's and asyncio's
stdlib records get the same fields (timestamp, level, logger, bound context) as ours. Output goes
to stderr: under systemd that is journald, and ``json`` gives one object per line.

Per-call context (session, tenant, rpc, client pid) lives in one ContextVar holding a dict.
:func:`bound` binds it for one call and restores the previous dict on exit, so a pool thread that
serves the next RPC never inherits the last one's identity; the ``_merge_context`` processor adds it
to every event (the event's own keys win). One variable, not structlog's one-per-key
``bound_contextvars``: binding runs on every data-plane call, and one ``set``/``reset`` costs about
a tenth of binding four keys there. The same variable serves the no-structlog fallback. contextvars
do not flow into ``ThreadPoolExecutor`` workers by themselves: submit
``contextvars.copy_context().run``.

Payload bytes are never logged: the ``_redact_buffers`` processor replaces every bytes-like value
(bytes, bytearray, memoryview) in an event with ``"<N bytes>"``. Log keys as ``key.hex()`` when a
key is needed; message ``%s`` arguments are formatted before processors run, so never pass
buffers there.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

from dualbladed.errors import InvalidArgument

try:
    import structlog
except ImportError:  # pragma: no cover - exercised on machines without structlog
    # GPU boxes often carry torch/grpc but not structlog. The daemon must still run there, so
    # logging degrades to a small stdlib JSON formatter with the same bound-context fields.
    structlog = None  # type: ignore[assignment]

FORMATS = ("json", "console")
_BUFFER_TYPES = (bytes, bytearray, memoryview)

# The default is never mutated: bound() always sets a fresh dict.
_CONTEXT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "dualblade_log_context",
    default={},  # noqa: B039
)


def _merge_context(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    context = _CONTEXT.get()
    if context:
        event = {**context, **event}
    return event


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
    if structlog is None:
        _configure_stdlib(fmt, numeric, stream)
        return
    shared: list[Any] = [
        _merge_context,
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


class bound:  # noqa: N801 - used as a function: ``with bound(session=...):``
    """Bind ``kv`` (e.g. ``session=..., tenant=..., rpc=...``) to every log line in this call.

    The previous values (or their absence) are restored on exit, even on error. A class rather
    than ``@contextmanager``: it is entered on every data-plane call, and a generator costs more.
    """

    __slots__ = ("_kv", "_token")

    def __init__(self, **kv: Any) -> None:
        self._kv = kv

    def __enter__(self) -> None:
        self._token = _CONTEXT.set({**_CONTEXT.get(), **self._kv})

    def __exit__(self, *exc: object) -> None:
        _CONTEXT.reset(self._token)


# -- fallback without structlog ---------------------------------------------------------------

_RECORD_FIELDS = set(vars(logging.makeLogRecord({})))


class _FallbackFormatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            **_CONTEXT.get(),
            **{k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS},
        }
        _redact_buffers(None, "", event)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        if self._json:
            return json.dumps(event, default=str)
        return " ".join(f"{k}={v}" for k, v in event.items())


def _configure_stdlib(fmt: str, level: int, stream: TextIO | None) -> None:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_FallbackFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
