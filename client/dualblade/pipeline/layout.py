"""What a layer read is and how it is laid out in staging: `Segment`, `LayerRead`, and the
pipeline's counters (`PipelineStats`).

A layer's KV is one or more backend objects (block layout) or byte ranges of layer objects
(``ranged``), placed back to back in one staging buffer, each segment at a multiple of the
read's alignment so that every segment is a range the daemon can fill in place and any dtype
view of it is legal. Split out of ``pipeline.py``: these are plain values shared by the
pipeline, `DualBladeCache` and the benchmarks, with no threads or torch in them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from .backend import MIN_SEGMENT_ALIGN

__all__ = ["LayerRead", "PipelineStats", "Segment"]

# Segment offsets inside a layer buffer are aligned at least this much, so that any dtype view of
# a segment is legal; a backend's staging_alignment may ask for more.
_SEG_ALIGN = MIN_SEGMENT_ALIGN


@dataclass(frozen=True)
class Segment:
    """One backend object of a layer read: its key and exact size in bytes (for a ranged read,
    the range ``[offset, offset + nbytes)`` of a layer object)."""

    key: bytes
    nbytes: int
    offset: int = 0


@dataclass(frozen=True)
class LayerRead:
    """The objects making up one layer's KV, laid out back to back, each at a multiple of
    `align` (use `staging_alignment(backend)` for copy-free arena reads)."""

    segments: tuple[Segment, ...]
    align: int = _SEG_ALIGN
    #: the segments are ranges of layer objects: one ``read_ranges_into`` call for the layer
    ranged: bool = False

    def __post_init__(self) -> None:
        if self.align < _SEG_ALIGN or self.align & (self.align - 1):
            raise ValueError(f"align must be a power of two >= {_SEG_ALIGN}, got {self.align}")

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:  # cached: asked per layer per step
        out, off = [], 0
        for seg in self.segments:
            out.append(off)
            off += -(-seg.nbytes // self.align) * self.align
        return tuple(out)

    @property
    def payload_bytes(self) -> int:
        """The objects' bytes, without alignment padding."""
        return sum(seg.nbytes for seg in self.segments)

    @property
    def nbytes(self) -> int:
        """The staging buffer's size: payload plus alignment padding."""
        if not self.segments:
            return 0
        return self.offsets[-1] + self.segments[-1].nbytes

    def chunks(self, chunk_bytes: int) -> Iterator[list[tuple[Segment, int]]]:
        """Group consecutive segments into calls of at most `chunk_bytes` (at least one each)."""
        group: list[tuple[Segment, int]] = []
        size = 0
        for seg, off in zip(self.segments, self.offsets):
            if group and size + seg.nbytes > chunk_bytes:
                yield group
                group, size = [], 0
            group.append((seg, off))
            size += seg.nbytes
        if group:
            yield group


@dataclass(frozen=True)
class PipelineStats:
    steps: int
    reads: int
    read_bytes: int  # payload bytes read (alignment padding not counted)
    read_calls: int
    writes: int
    write_bytes: int
    # Seconds the model thread spent blocked in layer() waiting for reads.
    wait_s: float
    # Staging requests the backend could not serve (plain host memory was used instead).
    staging_fallbacks: int
    depth: int
    chunk_bytes: int
    io_ewma_s: float | None
    compute_ewma_s: float | None
    # Why the first staging fallback happened (the backend's error, e.g. "arena full: slot of
    # N bytes requested, ..."), None without one: what a fallback count alone cannot say.
    staging_error: str | None = None
