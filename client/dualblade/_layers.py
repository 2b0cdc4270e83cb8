"""The ranged API of :class:`dualblade.Client`: layer objects, appended to and read by ranges.

A layer object is one (sequence or prefix, layer, K|V) stream in one contiguous extent with a
reserved capacity (see ``dualbladed.store.layers``). A decode step then reads each layer's K and
V with one ranged read each -- all of them in one Batch with :meth:`read_ranges_into` -- instead
of one get per 256-token block.

Bytes travel the way put/get move them: staged through an arena slot (one copy in this process)
or, for a page-aligned tensor that already lives in the arena (:meth:`Client.arena_tensor`), not
copied at all. Split into this mixin to keep ``client.py`` short; it uses the Client's arena,
chunking and Batch plumbing and adds no state of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dualblade import _buffers, errors
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1.wire import ALIGNMENT

if TYPE_CHECKING:
    from dualblade.arena import Slot

__all__ = ["LayerMethods"]

_PATH_NAMES = ("direct", "pagecache")

#: A range whose bounce slot does not fit the arena is read in pieces of at most this size,
#: halved down to _MIN_PIECE while the arena has no room for one (:meth:`_read_in_pieces`).
_BOUNCE_PIECE = 4 << 20
_MIN_PIECE = 64 << 10


def _length(dst: Any, length: int | None) -> int:
    """Bytes a range reads: ``length``, or by default as many as ``dst`` holds."""
    return _buffers.nbytes_of(dst) if length is None else length


def _key(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class LayerMethods:
    """Mixed into :class:`dualblade.Client`."""

    def reserve(
        self,
        key: bytes | str,
        capacity: int,
        *,
        persistent: bool = False,
        path: str | None = None,
    ) -> None:
        """Create (or replace whatever is under ``key`` with) an empty layer object able to
        hold ``capacity`` bytes. The tenant quota counts the whole capacity."""
        if path is not None and path not in _PATH_NAMES:
            raise errors.InvalidArgument(f"unknown residency path {path!r}")
        bkey = _key(key)
        op = pb.ReserveOp(key=bkey, capacity=capacity, persistent=persistent, path=path or "")
        self._batch([pb.Op(reserve=op)])  # type: ignore[attr-defined]
        with self._sizes_lock:  # type: ignore[attr-defined]
            self._sizes[bkey] = 0  # type: ignore[attr-defined]

    def append(
        self,
        key: bytes | str,
        data: Any,
        *,
        durable: bool = False,
        expect_size: int | None = None,
    ) -> int:
        """Append ``data`` (bytes-like or tensor) at the object's end; returns the new size.

        ``expect_size``: fail with FailedPrecondition unless the object holds exactly that many
        bytes before the append (a retried append can then never land twice). Past the
        capacity: ResourceExhausted, nothing written.
        """
        return self._append([(_key(key), data)], durable, expect_size)[0]

    def append_many(
        self, items: Sequence[tuple[bytes | str, Any]], *, durable: bool = False
    ) -> list[int]:
        """Append to many layer objects (a key may repeat: its appends land in order)."""
        return self._append([(_key(k), v) for k, v in items], durable, None)

    def read_range_into(
        self, key: bytes | str, offset: int, buffer_or_tensor: Any, length: int | None = None
    ) -> int:
        """Read ``length`` bytes (default: as many as the buffer holds) from ``offset`` into
        ``buffer_or_tensor``; returns the bytes read. Past the object's end: OutOfRange."""
        return self._read_ranges([(_key(key), offset, buffer_or_tensor, length)])[0]

    def read_ranges_into(self, items: Sequence[tuple[bytes | str, int, Any]]) -> list[int]:
        """Fill each buffer from ``(key, offset)`` -- a whole decode step in one Batch (split
        only when the daemon's op limit or half the arena is exceeded)."""
        return self._read_ranges([(_key(k), off, dst, None) for k, off, dst in items])

    def read_range(self, key: bytes | str, offset: int = 0, length: int = 0) -> bytes:
        """The object's bytes ``[offset, offset + length)``; ``length`` 0: to the end (asks the
        daemon for the current size first)."""
        bkey = _key(key)
        if length == 0:
            length = self.stat(bkey).size - offset  # type: ignore[attr-defined]
            if length < 0:
                raise errors.OutOfRange(f"offset {offset} is past the end of key {bkey!r}")
            if length == 0:
                return b""
        buf = bytearray(length)
        n = self._read_ranges([(bkey, offset, buf, length)])[0]
        return bytes(memoryview(buf)[:n])

    # -- internals ------------------------------------------------------------------------

    def _append(
        self, items: list[tuple[bytes, Any]], durable: bool, expect_size: int | None
    ) -> list[int]:
        sizes: list[int] = []
        for chunk in self._chunks(items):  # type: ignore[attr-defined]
            ops, slots = [], []
            try:
                for key, data, n, offset in chunk:
                    slot, owned = self._stage_out(data, n, offset)  # type: ignore[attr-defined]
                    if owned:
                        slots.append(slot)
                    op = pb.AppendOp(key=key, arena_offset=slot.offset, length=n, durable=durable)
                    if expect_size is not None:
                        op.expect_size = expect_size
                    ops.append(pb.Op(append=op))
                results = self._batch(ops)  # type: ignore[attr-defined]
            finally:
                for slot in slots:
                    self.arena.free(slot)  # type: ignore[attr-defined]
            self._remember_sizes(chunk, results)  # type: ignore[attr-defined]
            sizes.extend(r.size for r in results)
        return sizes

    def _read_ranges(self, items: list[tuple[bytes, int, Any, int | None]]) -> list[int]:
        """Sizes read, in order. A range of 0 bytes (an empty buffer, or ``length=0`` passed to
        ``read_range_into``) reads nothing and sends nothing: 0 on the wire means "to the end"."""
        wanted = [i for i, (_, _, dst, n) in enumerate(items) if _length(dst, n) != 0]
        sizes = [0] * len(items)
        for i, size in zip(wanted, self._read_nonempty([items[i] for i in wanted])):
            sizes[i] = size
        return sizes

    def _read_nonempty(self, items: list[tuple[bytes, int, Any, int | None]]) -> list[int]:
        sizes: list[int] = []
        for chunk in self._range_chunks(items):
            got = [0] * len(chunk)
            ops, staged, pending, later = [], [], [], []
            try:
                for i, (key, offset, dst, n, arena_offset) in enumerate(chunk):
                    try:
                        slot, owned = self._stage_in(n, arena_offset)  # type: ignore[attr-defined]
                    except errors.ResourceExhausted:  # no room to bounce it at once
                        later.append(i)
                        continue
                    staged.append((i, slot, owned, dst))
                    rr = pb.ReadRangeOp(key=key, offset=offset, length=n, arena_offset=slot.offset)
                    ops.append(pb.Op(read_range=rr))
                results = self._batch(ops) if ops else []  # type: ignore[attr-defined]
                for (i, slot, owned, dst), r in zip(staged, results):
                    if owned:
                        copying = self._copy_out(slot, dst, r.size)
                        if copying is not None:
                            pending.append(copying)
                    got[i] = r.size
                for i in later:
                    key, offset, dst, n, _ = chunk[i]
                    got[i] = self._read_in_pieces(key, offset, dst, n)
            finally:
                for copying in pending:  # a GPU copy may still read the slot: let it finish
                    copying.synchronize()
                for _, slot, owned, _ in staged:
                    if owned:
                        self.arena.free(slot)  # type: ignore[attr-defined]
            sizes.extend(got)
        return sizes

    def _read_in_pieces(self, key: bytes, offset: int, dst: Any, n: int) -> int:
        """A range the arena cannot bounce in one slot right now (its free space fragmented, or
        held by other calls in flight): read it through smaller slots, one Batch per piece,
        halving the piece down to :data:`_MIN_PIECE` while even that does not fit. A range is
        exact (one past the object's end is OutOfRange), so the pieces read what one op would;
        only an error may leave earlier pieces copied into ``dst``."""
        done, piece = 0, _BOUNCE_PIECE
        while done < n:
            want = min(piece, n - done)
            try:
                slot = self.arena.alloc(want)  # type: ignore[attr-defined]
            except errors.ResourceExhausted:
                if piece <= _MIN_PIECE:
                    raise
                piece //= 2
                continue
            copying = None
            try:
                op = pb.ReadRangeOp(
                    key=key, offset=offset + done, length=want, arena_offset=slot.offset
                )
                (r,) = self._batch([pb.Op(read_range=op)])  # type: ignore[attr-defined]
                copying = self._copy_out(slot, _buffers.tail(dst, done), r.size)
            finally:
                if copying is not None:
                    copying.synchronize()
                self.arena.free(slot)  # type: ignore[attr-defined]
            done += r.size
            if r.size < want:  # (never for an exact range; no endless loop if it were)
                break
        return done

    def _copy_out(self, slot: Slot, dst: Any, n: int) -> Any:
        view = self.arena.view(slot)  # type: ignore[attr-defined]
        try:
            return _buffers.copy_out(dst, view[:n])
        finally:
            view.release()

    def _range_chunks(self, items: list[tuple[bytes, int, Any, int | None]]) -> list[list[tuple]]:
        """``(key, offset, dst, length, arena offset or None)`` groups, each one Batch: at most
        the op limit and half the arena of staged bytes (like ``Client._chunks``)."""
        budget = self.arena.size // 2  # type: ignore[attr-defined]
        max_ops = self._max_ops  # type: ignore[attr-defined]
        chunks: list[list[tuple]] = [[]]
        used = 0
        for key, offset, dst, length in items:
            room = _buffers.nbytes_of(dst)
            n = _length(dst, length)
            if n <= 0 or n > room:
                raise errors.InvalidArgument(
                    f"range length {n} for key {key!r} must be 1..{room} (the buffer's size)"
                )
            at = self._arena_offset_of(dst, n)  # type: ignore[attr-defined]
            staged = 0 if at is not None else -(-n // ALIGNMENT) * ALIGNMENT
            if chunks[-1] and (len(chunks[-1]) >= max_ops or used + staged > budget):
                chunks.append([])
                used = 0
            chunks[-1].append((key, offset, dst, n, at))
            used += staged
        return [c for c in chunks if c]
