"""Errors the dualblade SDK raises: one base class, one subclass per status code that matters.

The daemon reports failures as a status code name plus a message (the gRPC status, or the
``error`` object of a handshake reply); :func:`from_code` turns that pair into the matching
exception so callers can ``except dualblade.errors.NotFound``. Codes without a subclass of their
own (``INTERNAL``, ``UNKNOWN``, ...) come back as :class:`DualbladeError` with ``code`` set.
"""

from __future__ import annotations

__all__ = [
    "DataLoss",
    "DualbladeError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_code",
]


class DualbladeError(Exception):
    """Base of every SDK error. ``code`` is the status code name, e.g. ``"NOT_FOUND"``."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class NotFound(DualbladeError, LookupError):
    code = "NOT_FOUND"


class InvalidArgument(DualbladeError, ValueError):
    code = "INVALID_ARGUMENT"


class OutOfRange(InvalidArgument):
    code = "OUT_OF_RANGE"


class PermissionDenied(DualbladeError):
    code = "PERMISSION_DENIED"


class Unauthenticated(DualbladeError):
    code = "UNAUTHENTICATED"


class ResourceExhausted(DualbladeError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(DualbladeError):
    code = "FAILED_PRECONDITION"


class DataLoss(DualbladeError):
    code = "DATA_LOSS"


class Unavailable(DualbladeError):
    code = "UNAVAILABLE"


_BY_CODE: dict[str, type[DualbladeError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        InvalidArgument,
        OutOfRange,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        DataLoss,
        Unavailable,
    )
}


def from_code(code: str, message: str) -> DualbladeError:
    """The exception for status ``code`` (a name such as ``"NOT_FOUND"``) carrying ``message``."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return DualbladeError(message, code=code or "UNKNOWN")
    return cls(message)
