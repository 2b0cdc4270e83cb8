"""The namespace subsystem: the one device (or file) the daemon owns.

``open_namespace`` picks the implementation from what ``path`` is: a block device becomes a
:class:`BlockNamespace` (safety-checked, claimed with O_EXCL), anything else a preallocated
:class:`FileNamespace`. The superblock (:mod:`.superblock`), device discovery (:mod:`.discovery`)
and fault injection for tests (:mod:`.faulty`) are imported from their modules.
"""

from __future__ import annotations

import os
import stat

from dualbladed.errors import InvalidArgument
from dualbladed.namespace.abstract import Namespace
from dualbladed.namespace.block import BlockNamespace
from dualbladed.namespace.file import FileNamespace

__all__ = ["BlockNamespace", "FileNamespace", "Namespace", "open_namespace"]


def open_namespace(
    path: str | os.PathLike[str], *, size: int | None = None, force: bool = False
) -> Namespace:
    """Open ``path`` as the namespace.

    Args:
        path: a block device node, or a regular file (created when missing).
        size: bytes for a file namespace (required to create one; see :class:`FileNamespace`).
            A block device's size is the device's: giving one is an error.
        force: for a block device, accept a foreign filesystem/partition-table signature.
            Meaningless for files (there is nothing foreign to overwrite) and ignored.

    Raises:
        InvalidArgument, DeviceRefused, DeviceBusy, ResourceExhausted: see the classes.
    """
    try:
        is_block = stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        is_block = False
    if is_block:
        if size is not None:
            raise InvalidArgument(
                f"{os.fspath(path)} is a block device; its size is the device's, "
                f"do not give one (got {size})"
            )
        return BlockNamespace(path, force=force)
    return FileNamespace(path, size)
