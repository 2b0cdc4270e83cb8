"""Shared pytest configuration.

``--runslow`` enables the long crash loops and soaks (marked ``slow``); the default suite stays
under a few minutes on 2 cores. Namespaces live under ``tmp_path``, which must be on a
filesystem that supports O_DIRECT (ext4/xfs; tmpfs does not).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run long crash loops and soaks")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long-running: pass --runslow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
