"""dualblade as a vLLM (0.33) secondary KV tier: :class:`DualBladeTier`.

vLLM's ``OffloadingConnector`` with ``spec_name: TieringOffloadingSpec`` keeps a CPU pool of KV
chunks and loads this tier by name, with no vLLM patch::

    --kv-transfer-config '{"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
      "kv_connector_extra_config": {"spec_name": "TieringOffloadingSpec",
        "cpu_bytes_to_use": 8589934592,
        "secondary_tiers": [{"type": "DualBladeTier",
                             "module_path": "dualblade.integrations.vllm",
                             "socket": "/run/dualblade/grpc.sock", "tenant": "llama-8b"}]}}'

This module imports without vLLM; :class:`DualBladeTier` then raises ImportError when made.
Layout: ``_tier`` (the vLLM glue), ``_io`` (worker threads and the daemon session, no vLLM),
``_namespace`` (key prefix and default tenant).
"""

from __future__ import annotations

from typing import Any

#: The vLLM release whose tiering API this module is written and tested against.
VLLM_VERSION = "0.33.0"

try:
    import vllm.v1.kv_offload.tiering.async_lookup  # noqa: F401
    import vllm.v1.kv_offload.tiering.base  # noqa: F401
except ImportError as exc:  # vLLM absent, or too old/new to have the tiering API
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

if _IMPORT_ERROR is None:
    from dualblade.integrations.vllm._tier import DualBladeTier
else:

    class DualBladeTier:  # type: ignore[no-redef]
        """Stand-in when vLLM's tiering API cannot be imported: using it says why."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                f"DualBladeTier needs vLLM {VLLM_VERSION} with its tiered KV offloading API "
                f"(vllm.v1.kv_offload.tiering), which could not be imported: {_IMPORT_ERROR}"
            ) from _IMPORT_ERROR


__all__ = ["VLLM_VERSION", "DualBladeTier"]
