"""A real ``dualbladed`` runs bulk writes on niced threads, and only those (``io.bulk_write_nice``).

The kernel's view is read from ``/proc/<daemon>/task/*/stat`` (field 19, nice). The bulk pool's
threads start with the first bulk batch, so before it no daemon thread runs below the daemon's
own priority; after a 2 MiB put one does, and the object reads back intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dualblade import Client
from dualblade_tools.daemonproc import DaemonProcess

MiB = 1 << 20


def _task_nices(pid: int) -> list[int]:
    nices = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        nices.append(int(fields[16]))  # field 19 of stat(5); fields[0] is field 3
    return nices


@pytest.mark.parametrize("nice", [10, 0])
def test_daemon_runs_bulk_writes_niced(tmp_path: Path, nice: int) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[io]\nbulk_write_nice = {nice}\nbulk_write_bytes = "1MiB"\n')
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with DaemonProcess(tmp_path / "d", namespace_size="64MiB", config=cfg) as d:
        assert d.proc is not None
        with Client.connect(d.socket, tenant="bulk", arena_bytes=16 * MiB) as c:
            c.put(b"small", torch.arange(256, dtype=torch.uint8))
            assert max(_task_nices(d.proc.pid)) == base  # no bulk batch yet
            data = torch.randint(0, 256, (2 * MiB,), dtype=torch.uint8)
            c.put(b"big", data, path="pagecache")
            nices = _task_nices(d.proc.pid)
            assert max(nices) == (min(19, base + nice) if nice else base)
            assert min(nices) == base  # everything else keeps the daemon's priority
            out = torch.empty_like(data)
            c.get_into(b"big", out)
            assert torch.equal(out, data)
