"""Is a block device safe to take? The checks run before the daemon opens a device.

The primary guard is the ``O_EXCL`` open in :mod:`dualbladed.namespace.block`: the kernel refuses
it with EBUSY while the device is mounted or claimed by device-mapper, md, swap or another
exclusive opener. It does not see everything, so this module also looks for:

- **mounts** of the device or of any of its partitions: ``major:minor`` in field 3 of
  ``/proc/self/mountinfo``, or the mount source naming the device node (btrfs reports an
  anonymous device number there);
- **partitions**: children of ``/sys/class/block/<name>`` that have a ``partition`` attribute
  (an unmounted partition does not block O_EXCL on the whole disk);
- **holders**: ``/sys/class/block/<name>/holders`` of the device or its partitions (dm, md);
- **swap**: ``/proc/swaps``;
- **signatures**: ``blkid -p -o export`` (low-level probe, no cache) reporting a filesystem,
  RAID member, crypto container or partition table; exit code 2 means "nothing found";
- **read-only** devices (``/sys/class/block/<name>/ro``).

A valid dualblade superblock (copy A or B, see :mod:`dualbladed.namespace.superblock`) marks the
device as **ours** and is accepted. ``force`` overrides only the foreign-signature check: it is how
an operator says "erase that old filesystem"; nothing can make a mounted, partitioned, held or swap
device acceptable. A foreign signature on top of our superblock is still refused without force:
something (mkfs, a partitioner) wrote to the device after us.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from dataclasses import dataclass

from dualbladed.namespace.superblock import COPY_OFFSETS, SB_BLOCK, InvalidCopy, decode_superblock

logger = logging.getLogger(__name__)

SYS_BLOCK = "/sys/class/block"
_BLKID_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SafetyVerdict:
    path: str
    ok: bool
    #: Every reason to refuse, each a concrete sentence; empty when ``ok``.
    reasons: tuple[str, ...]
    #: What is on the device: a foreign type from blkid ("ext4", "dos" partition table,
    #: "LVM2_member"...), "dualblade" for our own superblock, or None for nothing recognised.
    signature: str | None
    #: A valid dualblade superblock is present.
    ours: bool


def _unescape(field: str) -> str:
    r"""Undo the octal escapes of /proc/self/mountinfo and /proc/swaps (``\040`` = space)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _read_attr(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class _Node:
    name: str  # kernel name: loop0, nvme0n1, nvme0n1p1
    devno: tuple[int, int]
    devnode: str  # /dev/<name>


def _partitions(name: str) -> list[_Node]:
    base = os.path.join(SYS_BLOCK, name)
    out = []
    try:
        children = sorted(os.listdir(base))
    except OSError:
        return out
    for child in children:
        if not os.path.exists(os.path.join(base, child, "partition")):
            continue
        dev = _read_attr(os.path.join(base, child, "dev"))
        if dev is None:
            continue
        major, minor = (int(x) for x in dev.split(":"))
        out.append(_Node(child, (major, minor), f"/dev/{child}"))
    return out


def _mounts(nodes: list[_Node]) -> list[str]:
    by_devno = {n.devno: n for n in nodes}
    by_path = {}
    for n in nodes:
        by_path[n.devnode] = n
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError as err:
        return [f"cannot read /proc/self/mountinfo to rule out mounts ({err})"]
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields:
            continue
        sep = fields.index("-")
        major, _, minor = fields[2].partition(":")
        mount_point = _unescape(fields[4])
        source = _unescape(fields[sep + 2]) if len(fields) > sep + 2 else ""
        node = by_devno.get((int(major), int(minor)))
        if node is None and source.startswith("/dev/"):
            node = by_path.get(os.path.realpath(source))
        if node is None:
            continue
        who = "" if node is nodes[0] else f"partition {node.name} "
        found.append(f"{who}mounted at {mount_point}")
    return found


def _holders(nodes: list[_Node]) -> list[str]:
    found = []
    for node in nodes:
        try:
            held_by = sorted(os.listdir(os.path.join(SYS_BLOCK, node.name, "holders")))
        except OSError:
            continue
        if held_by:
            who = "" if node is nodes[0] else f"partition {node.name} "
            found.append(f"{who}held by {', '.join(held_by)} (device-mapper/md or another driver)")
    return found


def _swaps(nodes: list[_Node]) -> list[str]:
    by_devno = {n.devno: n for n in nodes}
    try:
        with open("/proc/swaps") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        if not line.strip():
            continue
        filename = _unescape(line.split()[0])
        try:
            st = os.stat(filename)
        except OSError:
            continue
        if not stat.S_ISBLK(st.st_mode):
            continue
        node = by_devno.get((os.major(st.st_rdev), os.minor(st.st_rdev)))
        if node is not None:
            who = "" if node is nodes[0] else f"partition {node.name} "
            found.append(f"{who}in use as swap ({filename})")
    return found


def _blkid(path: str) -> tuple[str | None, str | None]:
    """(foreign signature description, probe problem); both None when the device is clean."""
    try:
        proc = subprocess.run(
            ["blkid", "-p", "-o", "export", path],
            capture_output=True,
            text=True,
            timeout=_BLKID_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        return None, "cannot probe for foreign signatures: blkid is not installed"
    except subprocess.TimeoutExpired:
        return None, f"cannot probe for foreign signatures: blkid hung for {_BLKID_TIMEOUT_S} s"
    if proc.returncode == 2:
        return None, None
    if proc.returncode == 8:
        return "ambivalent", None
    if proc.returncode != 0:
        err = proc.stderr.strip() or f"exit code {proc.returncode}"
        return None, f"cannot probe for foreign signatures: blkid failed ({err})"
    props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    if "TYPE" in props:
        return props["TYPE"], None
    if "PTTYPE" in props:
        return props["PTTYPE"], None
    return "unknown", None


def _describe_signature(kind: str) -> str:
    if kind == "ambivalent":
        return "several conflicting signatures (blkid: ambivalent probe)"
    if kind in {"dos", "gpt", "sun", "sgi", "mac", "bsd", "atari", "PMBR"}:
        return f"{kind} partition-table signature"
    if kind.endswith("_member") or kind in {"crypto_LUKS", "swap", "BitLocker"}:
        return f"{kind} signature"
    return f"{kind} filesystem signature"


def _ours(path: str) -> bool:
    """True when copy A or B holds a valid dualblade superblock."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for offset in COPY_OFFSETS.values():
            try:
                decode_superblock(os.pread(fd, SB_BLOCK, offset))
            except InvalidCopy:
                continue
            return True
        return False
    finally:
        os.close(fd)


def check_device(path: str | os.PathLike[str], *, force: bool = False) -> SafetyVerdict:
    """Decide whether the daemon may take ``path``; never raises for an unsafe device.

    Args:
        path: a block device node (symlinks such as /dev/disk/by-id/... are followed).
        force: accept a foreign filesystem or partition-table signature (and nothing else).
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as err:
        return SafetyVerdict(path, False, (f"cannot stat: {err.strerror}",), None, False)
    if not stat.S_ISBLK(st.st_mode):
        return SafetyVerdict(path, False, ("not a block device",), None, False)

    devno = (os.major(st.st_rdev), os.minor(st.st_rdev))
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{devno[0]}:{devno[1]}"))
    me = _Node(name, devno, os.path.realpath(path))
    parts = _partitions(name)
    nodes = [me, *parts]

    reasons: list[str] = []
    if os.path.exists(os.path.join(SYS_BLOCK, name, "partition")):
        reasons.append(f"{name} is a partition; give the whole device (NVMe namespace)")
    reasons += _mounts(nodes)
    if parts:
        reasons.append(f"has partitions ({', '.join(p.name for p in parts)})")
    reasons += _holders(nodes)
    reasons += _swaps(nodes)
    if _read_attr(os.path.join(SYS_BLOCK, name, "ro")) == "1":
        reasons.append("read-only device")

    try:
        ours = _ours(path)
    except OSError as err:
        reasons.append(f"cannot read the device: {err.strerror}")
        return SafetyVerdict(path, False, tuple(reasons), None, False)

    foreign, problem = _blkid(path)
    if problem is not None and not force:
        reasons.append(f"{problem} (use force to override)")
    if foreign is not None:
        what = _describe_signature(foreign)
        if ours:
            what += " over a dualblade superblock (written after it)"
        if force:
            logger.warning("%s: ignoring %s because force was given", path, what)
        else:
            reasons.append(f"{what} (use force to override)")
    signature = foreign if foreign is not None else ("dualblade" if ours else None)
    verdict = SafetyVerdict(path, not reasons, tuple(reasons), signature, ours)
    if reasons:
        logger.debug("refusing %s: %s", path, "; ".join(reasons))
    return verdict
