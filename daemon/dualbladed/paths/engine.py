"""The NVMe-direct I/O engine: O_DIRECT reads and writes between a namespace and memory.

Why threads and ``preadv``/``pwritev`` rather than io_uring or libaio: ``os.preadv`` and
``os.pwritev`` release the GIL for the whole syscall, and at KV-block sizes (>= 128 KiB) a small
pool of threads issuing them matches fio on the same device (measured on a virtio disk: a
pure-Python counter thread kept 94-97 % of its speed beside back-to-back 8 MiB O_DIRECT preadv,
and 1 MiB reads from 4-8 preadv threads reached the same 1-2 GiB/s ceiling as fio psync, libaio
and io_uring). The Python io_uring binding holds the GIL while it waits, and libaio needs a
system library; neither bought anything measurable at 1 MiB.

How a transfer runs:

- It is validated once (offset, length and buffer address against ``namespace.block_size``:
  :class:`~dualbladed.errors.Misaligned`; bounds against ``namespace.capacity``:
  :class:`~dualbladed.errors.OutOfRange`). The namespace's ``preadv``/``pwritev`` do not check.
- It is cut into ``request_bytes`` pieces. One piece (or ``queue_depth == 1``) runs inline on the
  caller's thread: no pool hop for the common small request. So does every transfer issued inside
  :func:`serial_transfers` (a batch of gets already runs its ops concurrently; see there), except
  a :meth:`DirectEngine.run_pieces` that asks to fan out (a layer object's chunks; see there)
  and a transfer inside :func:`fanned_transfers` (a layer object's append; see there).
- Otherwise ``queue_depth`` workers (the caller's thread plus ``queue_depth - 1`` pool threads)
  each take the next piece index from a shared counter until none is left, so up to
  ``queue_depth`` requests are in flight for this call and the per-call overhead is
  ``queue_depth`` task submissions, not one per piece. The queue depth is per call: concurrent
  callers each bring their own thread, and queue behind each other for the pool's.
- Short transfers are continued from where they stopped; zero progress is a
  :class:`~dualbladed.errors.DeviceIOError`. ``OSError`` is classified by
  :func:`dualbladed.oserrors.from_oserror`.
- The call returns only when every piece has finished, also on error, so the caller may reuse or
  unmap the buffer as soon as it returns. The first error is raised; pieces of a failed call that
  had not started are skipped, and the buffer's contents (read) or the device range (write) are
  then unspecified.

Buffers: the daemon's arenas are memfd ``mmap`` mappings, and ``aligned_buffer`` gives anonymous
page-aligned mappings; slices at block-size multiples of either are valid O_DIRECT targets.
Writes accept read-only memoryviews. The buffer's address is found without copying through the
buffer protocol (``PyObject_GetBuffer`` via ``ctypes.pythonapi``), which works for read-only and
writable buffers alike and, unlike ``ctypes.c_char.from_buffer``, leaves no export behind that
would stop the mapping from being closed. (numpy's ``.ctypes.data`` would also work, but numpy is
not a dependency of the daemon.)
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import mmap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Literal

from dualbladed.errors import (
    DeviceIOError,
    FailedPrecondition,
    InvalidArgument,
    Misaligned,
    OutOfRange,
)
from dualbladed.namespace.abstract import Namespace
from dualbladed.oserrors import from_oserror

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

logger = logging.getLogger(__name__)

__all__ = [
    "DirectEngine",
    "aligned_buffer",
    "buffer_address",
    "byte_view",
    "fanned_transfers",
    "serial_transfers",
]

Op = Literal["read", "write"]

#: Per thread: ``active`` is True while it runs pieces of :meth:`DirectEngine.run_pieces` (a
#: nested fan-out onto the same pool could deadlock it: always inline); ``serial`` inside
#: :func:`serial_transfers` (inline unless a caller asks for its own fan-out, ``run_pieces``).
_worker = threading.local()


def _inline(pieces: int, queue_depth: int, *, fan_out: bool = False) -> bool:
    """Whether a transfer of ``pieces`` runs inline on this thread (the module docstring)."""
    if pieces == 1 or queue_depth == 1 or getattr(_worker, "active", False):
        return True
    return not fan_out and getattr(_worker, "serial", False)


@contextlib.contextmanager
def serial_transfers() -> Iterator[None]:
    """Run the transfers this thread issues inline, with no fan-out onto the engine's pool.

    For callers that already keep many transfers in flight, one per thread: the batch executor
    runs a batch's gets on ``parallelism`` threads at once. A second fan-out per transfer there
    buys no device parallelism (the kernel already splits one large O_DIRECT request into
    several in flight) but costs a pool submit, an event and a thread hand-off per object, which
    on the 2-vCPU box measured ~0.1 daemon CPU-seconds per GB of 2 MiB gets (a third of the
    daemon's cost on the direct path). Nesting is allowed; the previous state is restored.
    """
    with _serial(True):
        yield


@contextlib.contextmanager
def fanned_transfers() -> Iterator[None]:
    """Let the transfers this thread issues fan out again inside :func:`serial_transfers`.

    For one op whose transfer is many requests of its own: a prefill's layer append writes
    16 MiB, and inline that is sixteen 1 MiB writes one after another, so a prefill's two ops
    per layer kept the device at queue depth ~2 (fio on the residency bench's disk: 1 MiB
    O_DIRECT requests at 0.67 GB/s at depth 1 against 1.06 at depth 8). A transfer issued on
    an engine worker still runs inline (a nested fan-out could deadlock the pool).
    """
    with _serial(False):
        yield


@contextlib.contextmanager
def _serial(value: bool) -> Iterator[None]:
    previous = getattr(_worker, "serial", False)
    _worker.serial = value
    try:
        yield
    finally:
        _worker.serial = previous


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable layout since 3.3)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_PyObject_GetBuffer.restype = ctypes.c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
_PyBuffer_Release.restype = None
_PyBUF_SIMPLE = 0


def buffer_address(buf: Buffer) -> int:
    """Address of the first byte of a C-contiguous buffer (read-only ones included), no copy."""
    view = _PyBuffer()
    _PyObject_GetBuffer(buf, ctypes.byref(view), _PyBUF_SIMPLE)  # raises BufferError itself
    try:
        return view.buf or 0
    finally:
        _PyBuffer_Release(ctypes.byref(view))


def byte_view(buf: Buffer) -> memoryview:
    """``buf`` as a flat memoryview of unsigned bytes (no copy); non-contiguous is rejected."""
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise InvalidArgument("I/O buffers must be C-contiguous")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """An anonymous, page-aligned (hence block-aligned) mapping of ``nbytes`` bytes."""
    if not isinstance(nbytes, int) or nbytes <= 0:
        raise InvalidArgument(f"buffer size must be a positive integer, got {nbytes!r}")
    return mmap.mmap(-1, nbytes)


class DirectEngine:
    """O_DIRECT transfers at byte offsets (block multiples) of ``namespace``.

    Args:
        namespace: the device; the engine does not close it.
        request_bytes: the largest single ``preadv``/``pwritev`` (a block-size multiple).
        queue_depth: requests in flight for one large transfer (>= 1).

    Raises:
        InvalidArgument: ``request_bytes`` or ``queue_depth`` breaks the rules above.
    """

    def __init__(
        self, namespace: Namespace, *, request_bytes: int = 1 << 20, queue_depth: int = 8
    ) -> None:
        block = namespace.block_size
        if not isinstance(request_bytes, int) or request_bytes <= 0 or request_bytes % block:
            raise InvalidArgument(
                f"request_bytes must be a positive multiple of the block size {block}, "
                f"got {request_bytes!r}"
            )
        if not isinstance(queue_depth, int) or queue_depth < 1:
            raise InvalidArgument(f"queue_depth must be an integer >= 1, got {queue_depth!r}")
        self.namespace = namespace
        self.block_size = block
        self.request_bytes = request_bytes
        self.queue_depth = queue_depth
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards _pool creation and _closed
        self._closed = False

    # ------------------------------------------------------------------ public API

    def read(self, offset: int, buf: memoryview) -> None:
        """Fill all of ``buf`` (writable) from ``[offset, offset + len(buf))``."""
        self._transfer("read", offset, buf)

    def write(self, offset: int, buf: memoryview) -> None:
        """Write all of ``buf`` (may be read-only) to ``[offset, offset + len(buf))``."""
        self._transfer("write", offset, buf)

    def close(self) -> None:
        """Stop the worker threads (waits for in-flight pieces). Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> DirectEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _transfer(self, op: Op, offset: int, buf: memoryview) -> None:
        if self._closed:
            raise FailedPrecondition("the I/O engine is closed")
        mv = byte_view(buf)
        if op == "read" and mv.readonly:
            raise InvalidArgument("read needs a writable buffer, got a read-only one")
        nbytes = mv.nbytes
        self._validate(op, offset, nbytes, mv)
        if nbytes == 0:
            return
        request = self.request_bytes
        pieces = -(-nbytes // request)
        if _inline(pieces, self.queue_depth):
            for start in range(0, nbytes, request):
                self._piece(op, mv, offset, start, min(request, nbytes - start))
            return
        self._parallel(op, mv, offset, nbytes, pieces)

    def _validate(self, op: Op, offset: int, nbytes: int, mv: memoryview) -> None:
        block = self.block_size
        if not isinstance(offset, int) or offset < 0:
            raise OutOfRange(f"{op} offset must be a non-negative integer, got {offset!r}")
        if offset % block:
            raise Misaligned(f"{op} offset", offset, block)
        if nbytes % block:
            raise Misaligned(f"{op} length", nbytes, block)
        address = buffer_address(mv)
        if address % block:
            raise Misaligned(f"{op} buffer address", address, block)
        capacity = self.namespace.capacity
        if offset + nbytes > capacity:
            raise OutOfRange(
                f"{op} of {nbytes} bytes at offset {offset} ends at {offset + nbytes}, "
                f"past the namespace capacity {capacity}"
            )

    def _parallel(self, op: Op, mv: memoryview, offset: int, nbytes: int, pieces: int) -> None:
        request = self.request_bytes

        def piece(index: int) -> None:
            start = index * request
            self._piece(op, mv, offset, start, min(request, nbytes - start))

        self.run_pieces(pieces, piece)

    def run_pieces(self, pieces: int, fn: Callable[[int], None], *, fan_out: bool = False) -> None:
        """Run ``fn(0) .. fn(pieces - 1)`` at up to ``queue_depth`` in flight; wait for all.

        The scheduler of :meth:`read`/:meth:`write`, open to callers that do more per piece than
        one transfer (a layer object's ranged read verifies each chunk's crc32c in the worker
        that read it, so checksumming overlaps the other chunks' I/O). A transfer issued by
        ``fn`` runs inline on its worker: a nested fan-out onto the same pool could deadlock it.
        The first error is raised after every started piece has finished; later pieces are
        skipped.

        ``fan_out`` keeps the fan-out inside :func:`serial_transfers`, for pieces that are each
        their own request: a layer object's chunks (one ``pread`` of 1 MiB each, which the
        kernel cannot merge), read inline, put one op at queue depth 1, so the device's queue
        depended on how many direct ops the step had in flight. Measured on the residency
        bench at budget ratio 4: an adaptive step that read 17% of its KV from the page cache
        was no faster than an all-direct one, and this disk reads 1 MiB requests at 0.67 GB/s
        at depth 1 against 1.06 at depth 8 (fio).
        """
        if pieces <= 0:
            return
        if _inline(pieces, self.queue_depth, fan_out=fan_out):
            for index in range(pieces):
                fn(index)
            return
        claim = itertools.count()  # next() on a C iterator is atomic under the GIL
        stop = threading.Event()
        errors: list[BaseException] = []

        def worker() -> None:
            nested = getattr(_worker, "active", False)
            _worker.active = True
            try:
                while not stop.is_set():
                    index = next(claim)
                    if index >= pieces:
                        return
                    try:
                        fn(index)
                    except BaseException as exc:  # re-raised on the caller's thread below
                        errors.append(exc)
                        stop.set()
                        return
            finally:
                _worker.active = nested

        helpers = min(self.queue_depth, pieces) - 1
        pool = self._get_pool()
        futures = [pool.submit(worker) for _ in range(helpers)]
        try:
            worker()
        finally:
            # Never return while a helper may still touch the caller's buffer.
            wait(futures)
        if errors:
            raise errors[0]

    def _piece(self, op: Op, mv: memoryview, offset: int, start: int, length: int) -> None:
        """One request: ``length`` bytes between ``mv[start:]`` and device ``offset + start``."""
        ns = self.namespace
        syscall = ns.preadv if op == "read" else ns.pwritev
        done = 0
        while done < length:
            view = mv[start + done : start + length]
            where = offset + start + done
            try:
                got = syscall([view], where)
            except OSError as exc:
                raise from_oserror(
                    exc, context=f"{op} of {length - done} bytes at offset {where} of {ns.path}"
                ) from exc
            if got <= 0:
                raise DeviceIOError(
                    f"{op} of {length - done} bytes at offset {where} of {ns.path} made no "
                    "progress (end of device?)"
                )
            if got < length - done:
                logger.debug("short %s at offset %d: %d of %d bytes", op, where, got, length - done)
            done += got

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the I/O engine is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.queue_depth - 1, thread_name_prefix="dualblade-io"
                )
            return self._pool
