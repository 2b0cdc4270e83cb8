"""Extent allocation over a namespace's data area.

Primitives:

- ``allocate(length) -> Extent``  one contiguous, aligned extent of exactly ``length`` rounded up
  to the alignment; raises :class:`~dualbladed.errors.OutOfSpace` and changes nothing when no
  single free extent is large enough.
- ``free(extent)``                return an extent; neighbours coalesce. Freeing space that is
  not allocated raises ``InvalidArgument`` (a double free is a bug we want to see).
- ``reserve(extent)``             mark a specific extent used (start-up rebuild from the
  committed extent table); raises ``InvalidArgument`` if any part is not free.
- ``stats() -> AllocStats``       free, used, largest free extent, fragmentation score.
- ``free_extents()``              the free map, in offset order (fsck, tests, dbctl).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Extent:
    """``[offset, offset + length)`` in bytes on the namespace."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class AllocStats:
    capacity: int  # bytes managed (the data area)
    free: int
    used: int
    largest_free: int
    free_extents: int
    #: 0.0 when all free space is one extent, towards 1.0 as it shatters:
    #: 1 - largest_free / free (0.0 when nothing is free).
    fragmentation: float


class Allocator(abc.ABC):
    alignment: int

    @abc.abstractmethod
    def allocate(self, length: int) -> Extent: ...

    @abc.abstractmethod
    def free(self, extent: Extent) -> None: ...

    @abc.abstractmethod
    def reserve(self, extent: Extent) -> None: ...

    @abc.abstractmethod
    def stats(self) -> AllocStats: ...

    @abc.abstractmethod
    def free_extents(self) -> Iterator[Extent]: ...
