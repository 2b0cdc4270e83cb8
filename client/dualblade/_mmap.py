"""Unmapping a buffer that may still be exported.

``mmap.close()`` raises ``BufferError`` while any memoryview (or a tensor made with
``torch.frombuffer``) still points into the mapping. Forcing the unmap would leave those views
pointing at unmapped memory (a segfault waiting to happen), so the rule in this project is: try
to unmap now, and if the mapping is still exported, drop our reference and let CPython unmap it
when the last view dies. Shared by the client arena, the daemon's session arenas and the
daemon's relocation bounce buffers.
"""

from __future__ import annotations

import mmap


def close_mapping(mapping: mmap.mmap) -> bool:
    """Unmap ``mapping`` now if nothing exports it; return False when unmapping is deferred."""
    try:
        mapping.close()
    except BufferError:
        return False
    return True
