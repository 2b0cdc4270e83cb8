"""The residency trace worker at the path issue 12 names; the code is
:mod:`dualblade_tools.bench.kvtrace` (moved there with the package layout, f4d627c).

``python tools/bench/kvtrace.py ARGS`` runs exactly ``python -m dualblade_tools.bench.kvtrace
ARGS``; importing this file gives that module's names.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, for a plain checkout
if __name__ == "__main__":
    runpy.run_module("dualblade_tools.bench.kvtrace", run_name="__main__", alter_sys=True)
else:
    from dualblade_tools.bench.kvtrace import *  # noqa: F403
