"""Batch outcomes carry domain errors; the service turns them into the same wire codes as before.

Clients compare ``OpResult.code`` with google.rpc codes, so each domain error must keep its
number. The codes below are google.rpc.Code values written out, not read back from the map.
"""

from __future__ import annotations

import pytest

from dualblade.v1 import dualblade_pb2 as pb
from dualbladed.errors import (
    Aborted,
    ChecksumMismatch,
    DeviceIOError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    OutOfSpace,
    QuotaExceeded,
    Unauthenticated,
)
from dualbladed.service.status import op_code
from dualbladed.service.store_servicer import op_result_pb
from dualbladed.sessions.requests import NOT_RUN, OpOutcome


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (InvalidArgument("bad"), 3),
        (NotFound("no such key"), 5),
        (QuotaExceeded("over"), 8),
        (OutOfSpace(8192, 4096, 4096), 8),
        (Aborted("not run"), 10),
        (OutOfRange("past the end"), 11),
        (DeviceIOError("EIO"), 13),
        (Unauthenticated("who"), 16),
        (ChecksumMismatch(b"k", 1, 2), 15),
    ],
)
def test_each_domain_error_keeps_its_wire_code(error, code):
    outcome = OpOutcome(error, size=0 if error else 4096, generation=0 if error else 7)
    result = op_result_pb(outcome)
    assert result.code == code
    assert result.message == ("" if error is None else str(error))
    assert op_code(error) == (code, result.message)
    assert outcome.ok is (error is None)


def test_success_carries_size_generation_and_path():
    result = op_result_pb(OpOutcome(None, size=4096, generation=9, path="pagecache"))
    assert (result.code, result.size, result.generation) == (0, 4096, 9)
    assert result.path == pb.RESIDENCY_PATH_PAGECACHE


def test_an_op_skipped_by_stop_on_error_is_aborted_on_the_wire():
    result = op_result_pb(NOT_RUN)
    assert result.code == 10 and "earlier op" in result.message
