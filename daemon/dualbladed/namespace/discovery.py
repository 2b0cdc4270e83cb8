"""Which devices could the daemon own? NVMe namespaces and attached loop devices, via pyudev.

pyudev enumerates ``/sys/class/block`` and reads sysfs attributes directly, so discovery works
without udevd (this container has none). What needs udevd is only the udev *properties*
(``ID_MODEL``, ``ID_SERIAL_SHORT``, ``ID_WWN``): they are used when present and otherwise the
sysfs attributes are (``device/model``, ``device/serial``, ``wwid``). Every attribute may be
missing (loop devices have no model; older kernels no ``wwid``), so each read is wrapped.

NVMe multipath exposes one visible head disk ``nvmeXnY`` and hidden per-path disks
``nvmeXcYnZ``; only the head is listed (the hidden ones cannot be opened anyway). A loop device
is listed only while attached (``size`` > 0). Sizes in sysfs ``size`` are always in 512-byte
units, whatever the logical block size.

Each entry carries the :class:`~dualbladed.namespace.safety.SafetyVerdict` the daemon would
reach (without force), so ``dbctl devices`` can say why a device would be refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pyudev

from dualbladed.namespace.safety import SafetyVerdict, check_device

logger = logging.getLogger(__name__)

_NVME = re.compile(r"^nvme\d+n\d+$")  # the head; nvmeXcYnZ (hidden paths) never match
_LOOP = re.compile(r"^loop\d+$")


@dataclass(frozen=True)
class DeviceInfo:
    path: str  # /dev/nvme0n1, /dev/loop3
    kind: str  # "nvme" | "loop"
    size: int  # bytes
    logical_block_size: int
    model: str | None
    serial: str | None
    wwid: str | None
    read_only: bool
    backing_file: str | None  # loop devices only
    verdict: SafetyVerdict


def _attr(device: pyudev.Device, name: str) -> str | None:
    try:
        value = device.attributes.asstring(name).strip()
    except (KeyError, OSError, UnicodeDecodeError):
        return None
    return value or None


def _prop(device: pyudev.Device, name: str) -> str | None:
    value = device.properties.get(name)
    return (value.strip() or None) if value else None


def _describe(device: pyudev.Device, kind: str) -> DeviceInfo | None:
    sectors = _attr(device, "size")
    if sectors is None or int(sectors) == 0:
        return None  # detached loop device, or an empty namespace
    lbs = _attr(device, "queue/logical_block_size")
    path = device.device_node or f"/dev/{device.sys_name}"
    if kind == "nvme":
        model = _prop(device, "ID_MODEL") or _attr(device, "device/model")
        serial = _prop(device, "ID_SERIAL_SHORT") or _attr(device, "device/serial")
        wwid = _attr(device, "wwid") or _prop(device, "ID_WWN")
        backing = None
    else:
        model = serial = wwid = None
        backing = _attr(device, "loop/backing_file")
    return DeviceInfo(
        path=path,
        kind=kind,
        size=int(sectors) * 512,
        logical_block_size=int(lbs) if lbs else 512,
        model=model,
        serial=serial,
        wwid=wwid,
        read_only=_attr(device, "ro") == "1",
        backing_file=backing,
        verdict=check_device(path),
    )


def discover(context: pyudev.Context | None = None) -> list[DeviceInfo]:
    """NVMe namespaces and attached loop devices, sorted by path.

    Args:
        context: a pyudev context to reuse (one is created otherwise).
    """
    ctx = context if context is not None else pyudev.Context()
    found = []
    for device in ctx.list_devices(subsystem="block", DEVTYPE="disk"):
        name = device.sys_name
        if _NVME.match(name):
            kind = "nvme"
        elif _LOOP.match(name):
            kind = "loop"
        else:
            continue
        try:
            info = _describe(device, kind)
        except (OSError, ValueError) as err:
            # A device that vanished mid-scan (loop detached) is simply not there.
            logger.debug("skipping %s during discovery: %s", name, err)
            continue
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda d: d.path)
