"""dualblade: the SDK for the dualbladed KV-cache tier.

    from dualblade import Client
    with Client.connect(tenant="llama-8b") as kv:
        kv.put(b"seq1/L0/k", tensor)
        kv.get_into(b"seq1/L0/k", out)

Errors are in :mod:`dualblade.errors`; the transformers integration is
:mod:`dualblade.integrations.transformers` (imported on demand, never here).

``Client`` and ``ObjectInfo`` are imported on first use (PEP 562), so a tool that needs only
:mod:`dualblade.errors` or the wire contract (``dbctl status``, whose run time is mostly
imports) does not pay for the client module and its dependencies.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualblade.client import Client, ObjectInfo

__all__ = ["Client", "ObjectInfo"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dualblade import client

        return getattr(client, name)
    raise AttributeError(f"module 'dualblade' has no attribute {name!r}")
