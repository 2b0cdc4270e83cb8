"""check_device paths that this kernel cannot produce for real.

The test kernel is built without partition-table parsers and without device-mapper, so a loop
device never gets partitions or holders here. Those two checks run against a real loop device
with a fake ``/sys/class/block`` tree (monkeypatched ``SYS_BLOCK``) that has the layout the kernel
would create.
"""

from __future__ import annotations

import pytest

from dualbladed.errors import DeviceRefused, InvalidArgument
from dualbladed.namespace import BlockNamespace, safety
from dualbladed.namespace.safety import check_device
from loopdev_utils import LoopDevices, loop_skip_reason


def test_regular_file_is_not_a_block_device(tmp_path):
    f = tmp_path / "plain"
    f.write_bytes(b"")
    verdict = check_device(f)
    assert (verdict.ok, verdict.reasons) == (False, ("not a block device",))
    with pytest.raises(InvalidArgument, match="not an NVMe namespace or loop device"):
        BlockNamespace(f)


def test_missing_path_is_refused(tmp_path):
    verdict = check_device(tmp_path / "nope")
    assert not verdict.ok and verdict.reasons[0].startswith("cannot stat")


def test_mountinfo_escapes_are_undone():
    assert safety._unescape(r"/mnt/with\040space") == "/mnt/with space"


_skip = loop_skip_reason()


@pytest.mark.root
@pytest.mark.skipif(_skip is not None, reason=_skip or "")
def test_partitions_and_holders_refuse_even_with_force(tmp_path, monkeypatch):
    loops = LoopDevices(tmp_path)
    try:
        dev = loops.attach()
        name = dev.rsplit("/", 1)[1]
        fake = tmp_path / "sys-class-block"
        part = fake / name / f"{name}p1"
        part.mkdir(parents=True)
        (part / "partition").write_text("1\n")
        (part / "dev").write_text("259:77\n")
        (part / "holders").mkdir()
        (part / "holders" / "md0").mkdir()
        (fake / f"{name}p1").symlink_to(part)  # sysfs lists partitions at the top level too
        (fake / name / "holders" / "dm-3").mkdir(parents=True)
        (fake / name / "ro").write_text("0\n")
        monkeypatch.setattr(safety, "SYS_BLOCK", str(fake))

        verdict = check_device(dev, force=True)
        assert not verdict.ok
        assert f"has partitions ({name}p1)" in verdict.reasons
        assert any(r.startswith("held by dm-3") for r in verdict.reasons)
        assert any(r.startswith(f"partition {name}p1 held by md0") for r in verdict.reasons)

        (fake / name / "ro").write_text("1\n")
        assert "read-only device" in check_device(dev).reasons
        with pytest.raises(DeviceRefused) as info:
            BlockNamespace(dev, force=True)
        assert len(info.value.reasons) == 4, "every reason is reported at once"
    finally:
        loops.cleanup()
