"""Framework integrations. Each submodule imports its framework; this package imports none.

`dualblade.integrations.transformers` holds `DualBladeCache` for ``model.generate``.
"""

from __future__ import annotations
