"""Measure issue 15's disk attack: one unprivileged uid filling the page cache.

Two runs, each against a real root daemon with a real attacker process running as uid 65534
(imports first, then drops privileges), printing one JSON document:

* ``floor``: the state directory on its own small ext4 filesystem (a loop-mounted image, the
  "host disk"), the attacker made quota-less on purpose (``quotas.per_uid = {65534 = 0}``) and
  the page cache forced (``residency.mode = "pagecache"``) so only the page-cache cap and the
  free-space floor stand between it and a full disk. A sampler reads ``statvfs`` every 10 ms;
  the figure is the lowest free percentage (``f_bavail``, what unprivileged users may still
  write) against the floor. Then the attacker deletes everything and the filesystem's use after
  the deletes shows whether the slabs gave the space back.
* ``quota``: the default configuration on a 512 MiB namespace (the issue's setup): the attacker
  has no quota entry and spreads its puts over eight labels; the figure is the bytes it could
  store against the namespace size.

Needs root (mount, setuid). ``python -m dualblade_tools.hostile_disk [--fs-mib N] [workdir]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dualblade_tools.daemonproc import DaemonProcess

MiB = 1 << 20
NOBODY = 65534
#: gRPC imports some modules lazily (grpc._channel on the first channel): load them all before
#: dropping privileges, so the attacker works from a checkout or venv that uid cannot read.
_PRELOAD = (
    "import grpc, importlib, pkgutil; "
    "[importlib.import_module(m.name) for m in pkgutil.iter_modules(grpc.__path__, 'grpc.') "
    "if not m.ispkg]"
)


@contextmanager
def small_filesystem(workdir: Path, size: int):  # -> Iterator[Path]
    """An ext4 filesystem of ``size`` bytes mounted at ``workdir/fs`` (loop), removed after."""
    image, mnt = workdir / "fs.img", workdir / "fs"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, capture_output=True)
    try:
        os.chmod(mnt, 0o755)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        image.unlink(missing_ok=True)


def free_fraction(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail / st.f_blocks


class Sampler:
    """The lowest free fraction of ``path``'s filesystem, sampled every ``period`` s."""

    def __init__(self, path: Path, period: float = 0.01) -> None:
        self.path, self.period = path, period
        self.lowest = free_fraction(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.lowest = min(self.lowest, free_fraction(self.path))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.lowest = min(self.lowest, free_fraction(self.path))


def open_to_others(daemon: DaemonProcess) -> None:
    """Let uid 65534 reach the sockets (as an admin would, with a group, in production)."""
    os.chmod(daemon.socket.parent, 0o755)
    for p in (daemon.socket, daemon.socket.parent / "handshake.sock"):
        os.chmod(p, 0o666)


def attack(socket: Path, *, labels: int, limit: int, obj: int) -> dict[str, Any]:
    """Run the attacker as uid 65534: put ``obj``-byte objects under ``labels`` labels until
    refused or ``limit`` bytes are stored."""
    code = textwrap.dedent(
        f"""
        import json, os, time
        from dualblade import Client, errors
        {_PRELOAD}
        os.setgroups([]); os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
        os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
        out = {{"stored": 0, "paths": {{}}, "refusals": [], "puts": 0}}
        payload = os.urandom({obj})
        t0 = time.monotonic()
        for label in range({labels}):
            with Client.connect({str(socket)!r}, tenant=f"l{{label}}",
                                arena_bytes={2 * obj}) as c:
                i = 0
                while out["stored"] < {limit}:
                    try:
                        info = c.put(f"k{{i}}", payload, persistent=True)
                    except errors.ResourceExhausted as err:
                        out["refusals"].append(str(err))
                        break
                    out["stored"] += {obj}
                    out["puts"] += 1
                    out["paths"][info.path] = out["paths"].get(info.path, 0) + 1
                    i += 1
        out["fill_s"] = time.monotonic() - t0
        print(json.dumps(out))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"attacker failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def measure_floor(workdir: Path, fs_bytes: int, obj: int = 1 * MiB) -> dict[str, Any]:
    namespace_bytes = 2 * fs_bytes  # the cap (= namespace size) alone would let it fill the fs
    with small_filesystem(workdir, fs_bytes) as mnt:
        cfg = workdir / "floor.toml"
        cfg.write_text(f'[residency]\nmode = "pagecache"\n\n[quotas.per_uid]\n{NOBODY} = 0\n')
        daemon = DaemonProcess(
            mnt / "d",
            namespace_size=f"{namespace_bytes // MiB}MiB",
            namespace=workdir / "floor-ns.img",  # the namespace is not on the small disk
            config=cfg,
        )
        os.makedirs(mnt / "d", mode=0o755)
        with daemon:
            open_to_others(daemon)
            st = os.statvfs(mnt)
            size = st.f_blocks * st.f_frsize
            floor = min(2 << 30, int(size * 0.10))  # the defaults of residency.pagecache_min_free_*
            before = free_fraction(mnt)
            with Sampler(mnt) as sampler:
                out = attack(daemon.socket, labels=1, limit=int(1.5 * fs_bytes), obj=obj)
            peak_used = size - os.statvfs(mnt).f_bavail * st.f_frsize
            slabs = slab_blocks(daemon)
            delete_rc = delete_all(daemon.socket, labels=1)
            after_slabs = slab_blocks(daemon)
            after_free = free_fraction(mnt)
        return {
            "filesystem_bytes": size,
            "floor_bytes": floor,
            "floor_fraction": floor / size,
            "free_fraction_before": before,
            "lowest_free_fraction": sampler.lowest,
            "attacker": out,
            "used_at_peak_bytes": peak_used,
            "slab_bytes_on_disk_at_peak": slabs,
            "slab_bytes_on_disk_after_delete": after_slabs,
            "free_fraction_after_delete": after_free,
            "delete_rc": delete_rc,
        }


def slab_blocks(daemon: DaemonProcess) -> int:
    """Bytes the page-cache slab files occupy on disk."""
    return sum(os.stat(p).st_blocks * 512 for p in (daemon.state_dir / "pagecache").iterdir())


def delete_all(socket: Path, labels: int) -> int:
    code = textwrap.dedent(
        f"""
        import os
        from dualblade import Client
        {_PRELOAD}
        os.setgroups([]); os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
        os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
        for label in range({labels}):
            with Client.connect({str(socket)!r}, tenant=f"l{{label}}", arena_bytes=1 << 20) as c:
                while True:
                    keys = [o.key for o in c.list(limit=512)]
                    if not keys:
                        break
                    c.delete_many(keys)
        """
    )
    return subprocess.run([sys.executable, "-c", code], timeout=900).returncode


def measure_quota(workdir: Path, namespace_bytes: int = 512 * MiB, obj: int = 1 * MiB) -> dict:
    daemon = DaemonProcess(workdir / "q", namespace_size=f"{namespace_bytes // MiB}MiB")
    os.makedirs(workdir / "q", mode=0o755)
    with daemon:
        open_to_others(daemon)
        with Sampler(workdir) as sampler:
            out = attack(daemon.socket, labels=8, limit=4 * namespace_bytes, obj=obj)
    return {
        "namespace_bytes": namespace_bytes,
        "stored_bytes": out["stored"],
        "stored_fraction_of_namespace": out["stored"] / namespace_bytes,
        "host_lowest_free_fraction": sampler.lowest,
        "attacker": {**out, "refusals": out["refusals"][:1]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", nargs="?", help="scratch directory (default: a new one in /tmp)")
    p.add_argument("--fs-mib", type=int, default=1024, help="size of the small state filesystem")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("hostile_disk: needs root (mount, setuid)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dbhostile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    try:
        result = {
            "floor": measure_floor(workdir, args.fs_mib * MiB),
            "quota": measure_quota(workdir),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
