"""The daemon's error types: one module, one small closed hierarchy.

Callers catch these types, never a bare ``Exception``. Each class names the gRPC status code it
maps to (``grpc_code``, a plain string so this module does not import grpc); the single mapping to
``grpc.StatusCode`` lives in :mod:`dualbladed.service.status`.

Rollback guarantee: every operation that raises one of these errors leaves the store exactly as it
was before the call (no extent leaked, no metadata half-written, nothing already acknowledged
lost). Messages name the offending value and the rule it broke, because they travel to clients
verbatim.
"""

from __future__ import annotations


class DualbladeError(Exception):
    """Base of every expected failure. ``str(err)`` is the human-readable message."""

    grpc_code: str = "INTERNAL"


class InvalidArgument(DualbladeError):
    """A request or config value breaks a rule (bad key, bad length, unknown option)."""

    grpc_code = "INVALID_ARGUMENT"


class Misaligned(InvalidArgument):
    """An O_DIRECT offset, length or buffer address is not a multiple of the block size."""

    def __init__(self, what: str, value: int, alignment: int) -> None:
        super().__init__(
            f"{what} {value} is not aligned to {alignment} bytes "
            f"({value} % {alignment} = {value % alignment})"
        )
        self.what = what
        self.value = value
        self.alignment = alignment


class OutOfRange(InvalidArgument):
    """An offset/length pair falls outside the buffer or device it addresses."""

    grpc_code = "OUT_OF_RANGE"


class NotFound(DualbladeError):
    """No such key (for this tenant: other tenants' keys are indistinguishable from absent)."""

    grpc_code = "NOT_FOUND"


class AlreadyExists(DualbladeError):
    grpc_code = "ALREADY_EXISTS"


class FailedPrecondition(DualbladeError):
    """The system is not in a state that allows the call (closed store, wrong namespace)."""

    grpc_code = "FAILED_PRECONDITION"


class DeviceRefused(FailedPrecondition):
    """A block device is unsafe to take (mounted, partitioned, held, foreign signature)."""

    def __init__(self, path: str, reasons: list[str]) -> None:
        super().__init__(f"refusing to use {path}: " + "; ".join(reasons))
        self.path = path
        self.reasons = list(reasons)


class DeviceBusy(DeviceRefused):
    """O_EXCL open failed with EBUSY: the device is mounted or claimed by someone else."""


class SuperblockError(FailedPrecondition):
    """Neither superblock copy is valid, or the namespace belongs to another store."""


class ResourceExhausted(DualbladeError):
    grpc_code = "RESOURCE_EXHAUSTED"


class OutOfSpace(ResourceExhausted):
    """No free extent is large enough (possibly although enough bytes are free in total)."""

    def __init__(self, requested: int, free: int, largest_free: int) -> None:
        kind = "fragmented" if free >= requested else "full"
        super().__init__(
            f"out of space ({kind}): requested {requested} bytes, {free} bytes free, "
            f"largest contiguous free extent {largest_free} bytes"
        )
        self.requested = requested
        self.free = free
        self.largest_free = largest_free


class QuotaExceeded(ResourceExhausted):
    """The tenant's capacity quota would be exceeded."""


class DiskFloorReached(ResourceExhausted):
    """A page-cache allocation would take the state filesystem below its free-space floor."""

    def __init__(self, directory: str, requested: int, available: int, floor: int) -> None:
        super().__init__(
            f"page-cache free-space floor reached on {directory}: {available} bytes available, "
            f"{requested} requested, floor {floor} bytes (residency.pagecache_min_free_*)"
        )
        self.requested = requested
        self.available = available
        self.floor = floor


class UnsafeDirectory(FailedPrecondition):
    """A socket or state directory others could tamper with (see dualbladed.safedirs)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"unsafe directory {path}: {problem}")
        self.path = path
        self.problem = problem


class PinLimitExceeded(ResourceExhausted):
    """A session asked for more hit pins than ``limits.max_pins_per_session`` allows."""


class PermissionDenied(DualbladeError):
    grpc_code = "PERMISSION_DENIED"


class Unauthenticated(DualbladeError):
    """Missing, unknown or expired session token."""

    grpc_code = "UNAUTHENTICATED"


class Aborted(DualbladeError):
    """The operation was not run because an earlier one it depended on failed."""

    grpc_code = "ABORTED"


class Unavailable(DualbladeError):
    """The daemon is shutting down or a dependency is temporarily gone."""

    grpc_code = "UNAVAILABLE"


class DataLoss(DualbladeError):
    """Stored bytes failed verification; they are never returned."""

    grpc_code = "DATA_LOSS"


class ChecksumMismatch(DataLoss):
    def __init__(self, key: bytes, expected: int, actual: int) -> None:
        super().__init__(
            f"checksum mismatch for key {key!r}: stored {expected:#018x}, read {actual:#018x}; "
            "the object was dropped"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


class LayerChecksumMismatch(ChecksumMismatch):
    """One chunk of a layer object failed its crc32c (see ``dualbladed.store.layers``)."""

    def __init__(
        self, key: bytes, chunk: int, chunk_bytes: int, expected: int, actual: int
    ) -> None:
        DataLoss.__init__(
            self,
            f"checksum mismatch for key {key!r} in chunk {chunk} (bytes {chunk * chunk_bytes}.."
            f"{(chunk + 1) * chunk_bytes}): stored crc32c {expected:#010x}, read {actual:#010x}; "
            "the object was dropped",
        )
        self.key = key
        self.chunk = chunk
        self.expected = expected
        self.actual = actual


class CapacityExceeded(ResourceExhausted):
    """An append would grow a layer object past its reserved capacity."""


class DeviceIOError(DualbladeError):
    """The device returned an I/O error (EIO and friends)."""

    grpc_code = "INTERNAL"
