"""Input checks and buffer helpers of the object store.

Everything here validates what a caller hands to :class:`~dualbladed.store.objects.ObjectStore`
(tenant names, keys, caller buffers) and raises :class:`~dualbladed.errors.InvalidArgument`
with a message that names the problem; nothing here touches storage or takes a lock. The limits
live here so the store and the servicers that pre-check requests agree on them.
"""

from __future__ import annotations

from dualbladed.errors import InvalidArgument

__all__ = ["DEFAULT_MAX_OBJECT_BYTES", "MAX_KEY_BYTES", "as_bytes_view", "check_key", "zero"]

MAX_KEY_BYTES = 1024
#: A tuple built once: ``bytes | bytearray | memoryview`` in the check would build a union
#: object per call (a put of many small objects checks many keys).
_KEY_TYPES = (bytes, bytearray, memoryview)
DEFAULT_MAX_OBJECT_BYTES = 256 << 20


def as_bytes_view(buf: object, *, writable: bool, what: str) -> memoryview:
    """A flat unsigned-byte view of ``buf`` (no copy); refuses gappy or read-only buffers."""
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(
            f"{what} must support the buffer protocol, got {type(buf).__name__}"
        ) from None
    if not view.contiguous:
        raise InvalidArgument(f"{what} buffer must be contiguous")
    if writable and view.readonly:
        raise InvalidArgument(f"{what} buffer must be writable")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def zero(view: memoryview) -> None:
    """Overwrite ``view`` with zeros (used so that bytes failing their checksum never leak)."""
    chunk = bytes(min(len(view), 1 << 20))
    for start in range(0, len(view), len(chunk)):
        end = min(start + len(chunk), len(view))
        view[start:end] = chunk[: end - start]


def check_key(tenant: str, key: bytes) -> bytes:
    """Validate ``(tenant, key)`` and return the key as immutable ``bytes``."""
    if not isinstance(tenant, str) or not tenant:
        raise InvalidArgument(f"tenant must be a non-empty string, got {tenant!r}")
    if not isinstance(key, _KEY_TYPES):
        raise InvalidArgument(f"key must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise InvalidArgument(f"key length {len(key)} is outside 1..{MAX_KEY_BYTES} bytes")
    return key
