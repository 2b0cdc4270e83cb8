"""``pb_dict``: dbctl's JSON shape of protobuf replies, field rule by field rule.

The conversion works from a per-message-type plan cached for the process (issue 14: a Status
reply holds hundreds of small messages); each rule is checked on real generated messages,
twice, so the second conversion runs from the cached plan.
"""

from __future__ import annotations

import json

from dualblade.v1 import dualblade_pb2 as pb
from dualblade_tools.dbctl_render import pb_dict

BIG = (1 << 63) + 5  # a uint64 past int64 and past a double's exact range


def twice(msg: object) -> dict:
    first, second = pb_dict(msg), pb_dict(msg)  # type: ignore[arg-type]
    assert first == second
    return second


def test_scalars_enums_bytes_and_optional_presence() -> None:
    unset = twice(pb.AppendOp(key=b"k\xff", arena_offset=BIG, length=3, durable=True))
    assert unset == {
        "key": "k\\xff",  # bytes as UTF-8 with backslash escapes
        "arena_offset": BIG,  # a JSON number, not a string
        "length": 3,
        "durable": True,
        "expect_size": None,  # an unset optional is null
    }
    assert twice(pb.AppendOp(expect_size=0))["expect_size"] == 0  # set to zero: present
    put = twice(pb.PutOp(key=b"a", path=pb.RESIDENCY_PATH_PAGECACHE))
    assert put["path"] == "RESIDENCY_PATH_PAGECACHE" and put["persistent"] is False
    assert json.loads(json.dumps(unset))["arena_offset"] == BIG


def test_repeated_fields_and_nested_messages() -> None:
    result = twice(
        pb.OpResult(
            generations=[1, BIG],
            paths=[pb.RESIDENCY_PATH_DIRECT, pb.RESIDENCY_PATH_UNSPECIFIED, 7],
        )
    )
    assert result["generations"] == [1, BIG]
    # an enum number the schema does not know stays a number
    assert result["paths"] == ["RESIDENCY_PATH_DIRECT", "RESIDENCY_PATH_UNSPECIFIED", 7]
    assert twice(pb.PutPackedOp(keys=[b"x", b"y"]))["keys"] == ["x", "y"]
    metrics = pb.TenantMetrics(
        tenant="t", latency=pb.Histogram(bounds_ms=[0.5, 1.0], counts=[1, 2, 3], count=6)
    )
    status = twice(pb.StatusResponse(metrics=[metrics, pb.TenantMetrics(tenant="u")]))
    assert [m["tenant"] for m in status["metrics"]] == ["t", "u"]
    assert status["metrics"][0]["latency"] == {
        "bounds_ms": [0.5, 1.0],
        "counts": [1, 2, 3],
        "count": 6,
        "sum_ms": 0.0,
    }
    assert status["metrics"][1]["latency"] is None  # an unset message is null


def test_deprecated_fields_are_left_out() -> None:
    status = twice(pb.StatusResponse(residency_json="{}", block_size=4096))
    assert "residency_json" not in status
    assert status["block_size"] == 4096 and "residency" in status
