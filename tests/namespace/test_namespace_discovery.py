"""discover() over a fake pyudev context: NVMe does not exist on this machine, so its devices are
stand-ins that expose the same ``sys_name``/``attributes``/``properties`` surface pyudev gives.
(The loop-device path runs against real sysfs in test_block_namespace.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from dualbladed.namespace.discovery import discover


class FakeAttributes:
    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def asstring(self, name: str) -> str:
        return self._values[name]  # KeyError for a missing attribute, as pyudev raises


@dataclass
class FakeDevice:
    sys_name: str
    attrs: dict[str, str]
    properties: dict[str, str] = field(default_factory=dict)
    device_node: str | None = None

    @property
    def attributes(self) -> FakeAttributes:
        return FakeAttributes(self.attrs)


class FakeContext:
    def __init__(self, devices: list[FakeDevice]) -> None:
        self.devices = devices
        self.queries: list[dict[str, str]] = []

    def list_devices(self, **query: str) -> list[FakeDevice]:
        self.queries.append(query)
        return self.devices


def test_nvme_heads_are_listed_and_hidden_paths_skipped():
    nvme = FakeDevice(
        "nvme0n1",
        {
            "size": str(2 * 1024 * 1024 * 1024 // 512),
            "queue/logical_block_size": "4096",
            "device/model": "Samsung SSD 990 PRO  ",
            "device/serial": "S6Z1NJ0W123456",
            "wwid": "eui.0025388b21b1c2d3",
            "ro": "0",
        },
        device_node="/dev/nvme0n1",
    )
    hidden = FakeDevice("nvme0c0n1", {"size": "100", "queue/logical_block_size": "4096"})
    detached = FakeDevice("loop5", {"size": "0"})
    other = FakeDevice("vda", {"size": "1000"})
    with_udev = FakeDevice(
        "nvme1n2",
        {"size": "4096", "queue/logical_block_size": "512", "ro": "1"},
        properties={"ID_MODEL": "udev model", "ID_SERIAL_SHORT": "SER9", "ID_WWN": "nvme.1234"},
    )
    ctx = FakeContext([nvme, hidden, detached, other, with_udev])

    found = discover(ctx)  # type: ignore[arg-type]

    assert ctx.queries == [{"subsystem": "block", "DEVTYPE": "disk"}]
    assert [d.path for d in found] == ["/dev/nvme0n1", "/dev/nvme1n2"]
    first, second = found
    assert (first.kind, first.size, first.logical_block_size) == ("nvme", 2 << 30, 4096)
    assert (first.model, first.serial, first.wwid) == (
        "Samsung SSD 990 PRO",
        "S6Z1NJ0W123456",
        "eui.0025388b21b1c2d3",
    )
    assert not first.read_only and first.backing_file is None
    # The udev properties are used when udevd provides them; missing attributes become None.
    assert (second.model, second.serial, second.wwid, second.read_only) == (
        "udev model",
        "SER9",
        "nvme.1234",
        True,
    )
    # The device nodes do not exist here: the verdict says so rather than raising.
    assert not first.verdict.ok and first.verdict.reasons[0].startswith("cannot stat")
