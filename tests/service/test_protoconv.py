"""dualbladed.service.protoconv.to_pb: typed snapshot -> protobuf by field name, strictly.

Real generated ``dualblade.v1`` messages and plain dataclasses; nothing is mocked.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dualblade.v1 import dualblade_pb2 as pb
from dualbladed.service.protoconv import to_pb


@dataclass(frozen=True)
class Totals:
    objects: int
    bytes: int
    unrelated: str = "not a field of PathUsage"


@dataclass(frozen=True)
class Psi:
    mode: str | None
    events: int
    last_event_age_s: float | None


def test_fields_come_from_attributes_and_given_values_win() -> None:
    msg = to_pb(pb.PathUsage, Totals(3, 4096), path="direct")
    assert msg == pb.PathUsage(path="direct", objects=3, bytes=4096)
    assert to_pb(pb.PathUsage, Totals(3, 4096), path="d", bytes=1).bytes == 1


def test_none_leaves_an_optional_field_absent_and_a_value_sets_it() -> None:
    absent = to_pb(pb.PsiStatus, Psi(None, 7, None))
    assert absent.events == 7
    assert not absent.HasField("mode") and not absent.HasField("last_event_age_s")
    present = to_pb(pb.PsiStatus, Psi("trigger", 0, 0.0))
    assert present.HasField("mode") and present.HasField("last_event_age_s")
    assert present.last_event_age_s == 0.0  # zero is a value, not "unknown"


def test_a_field_nobody_fills_is_an_error() -> None:
    with pytest.raises(AttributeError):
        to_pb(pb.PathUsage, Totals(1, 2))  # no ``path`` attribute and none given


def test_a_message_field_must_be_given_converted() -> None:
    @dataclass(frozen=True)
    class Sample:
        tenant: str = "0/a"
        path: str = "direct"
        op: str = "get"
        ops: int = 1
        bytes: int = 2
        errors: int = 0
        latency: object = None

    with pytest.raises(TypeError, match="latency is a message"):
        to_pb(pb.TenantMetrics, Sample())
    msg = to_pb(pb.TenantMetrics, Sample(), latency=pb.Histogram(count=1))
    assert msg.latency.count == 1


def test_none_for_a_field_without_presence_is_an_error_unless_given() -> None:
    with pytest.raises(TypeError, match="no presence"):
        to_pb(pb.PathUsage, Totals(None, 2), path="direct")  # type: ignore[arg-type]
    assert to_pb(pb.PathUsage, Totals(1, 2), path=None).path == ""  # given None: not sent


def test_a_given_name_the_message_lacks_is_an_error() -> None:
    with pytest.raises(TypeError, match="no field pathh"):
        to_pb(pb.PathUsage, Totals(1, 2), path="d", pathh="d")


def test_repeated_scalars_take_any_iterable() -> None:
    @dataclass(frozen=True)
    class Health:
        serving: bool
        problems: tuple[str, ...]

    assert list(to_pb(pb.HealthResponse, Health(False, ("a", "b"))).problems) == ["a", "b"]
