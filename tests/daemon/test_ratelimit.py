"""dualbladed.ratelimit.TokenBucket: the accept limit's and the migration limit's one bucket.

The accept-rate policy (burst of a tenth of the rate) is tested in tests/sessions/test_accept.py;
here the parts only the arbiter uses: takes of many tokens, debt beyond the burst, and the
blocking ``wait`` with its stop event (a real Event and the real monotonic clock).
"""

from __future__ import annotations

import threading
import time

import pytest

from dualbladed.errors import InvalidArgument
from dualbladed.ratelimit import TokenBucket


def test_many_tokens_at_once_refill_at_the_rate() -> None:
    bucket = TokenBucket(1000.0, burst=500.0)
    assert bucket.take(0.0, 400) == 0.0
    assert bucket.take(0.0, 200) == pytest.approx(0.1)  # 100 left, 100 short at 1000/s
    assert bucket.take(0.1, 200) == 0.0


def test_a_take_beyond_the_burst_waits_for_a_full_bucket_then_leaves_a_debt() -> None:
    bucket = TokenBucket(100.0, burst=10.0)
    assert bucket.take(0.0, 50) == 0.0  # full bucket: goes, 40 tokens in debt
    assert bucket.take(0.0, 1) == pytest.approx(0.41)  # the debt is paid before the next one
    assert bucket.take(0.41, 1) == 0.0
    assert bucket.take(0.41, 50) == pytest.approx(0.1)  # waits for the bucket to be full again


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        TokenBucket(0.0, burst=1.0)
    with pytest.raises(InvalidArgument):
        TokenBucket(10.0, burst=0.0)


def test_wait_sleeps_for_the_rate_and_returns_true() -> None:
    bucket = TokenBucket(200.0, burst=10.0)
    stop = threading.Event()
    assert bucket.wait(10, stop)  # full: no sleep
    began = time.monotonic()
    assert bucket.wait(10, stop)  # empty: 10 tokens at 200/s
    assert time.monotonic() - began >= 0.05 * 0.99


def test_wait_returns_false_as_soon_as_stop_is_set() -> None:
    bucket = TokenBucket(0.01, burst=1.0)
    stop = threading.Event()
    assert bucket.wait(1, stop)
    threading.Timer(0.05, stop.set).start()
    began = time.monotonic()
    assert not bucket.wait(1, stop)  # would take 100 s
    assert time.monotonic() - began < 30  # a loaded box may be slow to run the timer
