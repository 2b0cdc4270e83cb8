"""CUDA helpers, imported only when a CUDA build of torch is in use.

``cudaHostRegister`` page-locks an existing mapping (our memfd arena) so that H2D/D2H copies
from it run at pinned speed (measured on an H100: 54.7 GB/s vs 7.4 GB/s pageable). Flag 0 is
``cudaHostRegisterDefault``; a read-only mapping would need ``cudaHostRegisterReadOnly`` (8).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

HOST_REGISTER_DEFAULT = 0
HOST_REGISTER_READ_ONLY = 8


def host_register(address: int, size: int, *, read_only: bool = False) -> bool:
    import torch

    flags = HOST_REGISTER_READ_ONLY if read_only else HOST_REGISTER_DEFAULT
    err = torch.cuda.cudart().cudaHostRegister(address, size, flags)
    if int(err) != 0:
        logger.warning("cudaHostRegister of the arena failed (error %s); copies stay pageable", err)
        return False
    return True


def host_unregister(address: int) -> None:
    import torch

    torch.cuda.cudart().cudaHostUnregister(address)
