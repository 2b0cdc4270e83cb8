"""dualblade: the SDK for the dualbladed KV-cache tier.

    from dualblade import Client
    with Client.connect(tenant="llama-8b") as kv:
        kv.put(b"seq1/L0/k", tensor)
        kv.get_into(b"seq1/L0/k", out)

Errors are in :mod:`dualblade.errors`; the transformers integration is
:mod:`dualblade.integrations.transformers` (imported on demand, never here).
"""

from dualblade.client import Client, ObjectInfo

__all__ = ["Client", "ObjectInfo"]
