"""``dualblade-bench``: one console script, one subcommand per benchmark.

Subcommands come from a lazy registry (name -> module path): only the chosen benchmark's module
is imported, so a benchmark that needs torch or a running daemon costs nothing to the others, and
a benchmark that is not written yet is reported plainly instead of breaking the whole tool. Each
module exposes ``configure(parser)`` (add its options) and ``run(args) -> int`` (exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

SUBCOMMANDS: dict[str, str] = {
    "io": "dualblade_tools.bench.io",
    "daemon": "dualblade_tools.bench.daemon",
    "residency": "dualblade_tools.bench.residency",
    "pipeline": "dualblade_tools.bench.pipeline",
    "scale": "dualblade_tools.bench.scale",
    "vllm-tier": "dualblade_tools.bench.vllm_tier",
    "readcost": "dualblade_tools.bench.readcost",
}

_HELP = {
    "io": "O_DIRECT engine bandwidth vs fio on the same namespace",
    "daemon": "end-to-end put/get through a running dualbladed",
    "residency": "page-cache vs direct path under memory pressure",
    "pipeline": "layer-wise prefetch pipeline vs compute",
    "scale": "daemon costs (puts, RSS, idle CPU, status, restart, fsck) as objects pile up",
    "vllm-tier": "DualBladeTier vs vLLM's fs tier: store/load GB/s, lookup p50",
    "readcost": "CPU per GiB of layer-object reads on each path, beside raw preadv + crc32c",
}


class BenchmarkUnavailable(Exception):
    """The subcommand's module does not exist in this build."""


def _load(name: str) -> ModuleType:
    module_name = SUBCOMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # the benchmark itself, not one of its dependencies
            raise BenchmarkUnavailable(
                f"dualblade-bench: the '{name}' benchmark is not available in this build "
                f"(module {module_name} does not exist yet)"
            ) from exc
        raise


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    """The parser; only ``selected`` (if any) is imported and configured."""
    parser = argparse.ArgumentParser(
        prog="dualblade-bench", description="Benchmarks for dualblade, each beside its floor."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        child = sub.add_parser(name, help=_HELP.get(name, ""), description=_HELP.get(name))
        if name == selected:
            module = _load(name)
            module.configure(child)
            child.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = args_list[0] if args_list and args_list[0] in SUBCOMMANDS else None
    try:
        parser = build_parser(selected)
    except BenchmarkUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    args = parser.parse_args(args_list)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
