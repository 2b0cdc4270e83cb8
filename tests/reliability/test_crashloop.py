"""Crash safety under real kills: kill points, the crash-loop oracle, and a short crash loop.

The short loop is the real thing, scaled down: the real ``dualbladed`` process on a file
namespace, SIGKILLed at every named kill point (it kills itself: ``DUALBLADE_KILL_POINT``) and
once at a random moment, restarted, verified against the oracle, and fsck'd while dead. The
``relocate.*`` points run in a child process driving a real ObjectStore with a direct and a
page-cache path, because the daemon does not migrate objects yet. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dualbladed
from dualblade_tools.crashloop import BLACKBOX, crashloop, main, schedule
from dualblade_tools.crashoracle import Counts, Oracle
from dualbladed.killpoints import ENV_ODDS, ENV_POINT, ENV_SEED, KILL_POINTS, _parse

D1, D2, D3 = b"1" * 16, b"2" * 16, b"3" * 16


def test_every_kill_point_has_exactly_one_call_site_and_vice_versa() -> None:
    root = Path(dualbladed.__file__).parent
    called: list[str] = []
    for source in root.rglob("*.py"):
        if source.name == "killpoints.py":  # its docstring shows a call
            continue
        called += re.findall(r'killpoint\("([^"]+)"\)', source.read_text())
    assert sorted(called) == sorted(KILL_POINTS)


def test_kill_points_are_off_without_the_environment_and_typos_are_refused() -> None:
    assert _parse({})[0] == frozenset()
    armed, odds, _ = _parse({ENV_POINT: "put.after_alloc, delete.after_commit", ENV_ODDS: "4"})
    assert armed == {"put.after_alloc", "delete.after_commit"} and odds == 4
    assert _parse({ENV_POINT: "*"})[0] == set(KILL_POINTS)
    with pytest.raises(ValueError, match="put.after_nothing"):
        _parse({ENV_POINT: "put.after_nothing"})
    with pytest.raises(ValueError, match=ENV_ODDS):
        _parse({ENV_POINT: "put.after_alloc", ENV_ODDS: "0"})


def _run_point(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "from dualbladed.killpoints import killpoint\n"
        "for _ in range(200):\n"
        "    killpoint('put.after_commit')\n"
        "print('survived')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_armed_point_sigkills_the_process_and_others_do_nothing() -> None:
    fired = _run_point({ENV_POINT: "put.after_commit"})
    assert fired.returncode == -9
    assert "KILLPOINT put.after_commit" in fired.stderr
    assert "survived" not in fired.stdout
    other = _run_point({ENV_POINT: "delete.after_commit"})
    assert other.returncode == 0 and "survived" in other.stdout
    # With odds 1/50 and 200 hits the seeded coin comes up at some hit: still a SIGKILL.
    seeded = _run_point({ENV_POINT: "put.after_commit", ENV_ODDS: "50", ENV_SEED: "7"})
    assert seeded.returncode == -9


def test_oracle_judges_durable_nondurable_deleted_and_in_flight_states() -> None:
    o, counts, failures = Oracle(), Counts(), []
    o.ack_put(b"durable", D1, durable=True)
    o.ack_put(b"lazy", D1, durable=False)
    o.ack_put(b"gone", D2, durable=True)
    o.ack_delete(b"gone")
    o.ack_put(b"flying", D1, durable=True)
    o.begin(b"flying", D3, durable=True)

    o.check(b"lazy", None, counts, failures)  # a non-durable put may be missing
    o.check(b"gone", D2, counts, failures)  # a non-durable delete may be undone
    o.check(b"flying", D3, counts, failures)  # the in-flight put landed
    assert (counts.nondurable_missing, counts.resurrected, counts.in_flight_landed) == (1, 1, 1)
    assert failures == []

    o.check(b"durable", None, counts, failures)
    assert counts.durable_lost == 1 and "lost" in failures[-1]
    o.ack_put(b"durable", D1, durable=True)
    o.check(b"durable", D2, counts, failures)
    assert counts.corrupt_reads == 1 and "never acknowledged" in failures[-1]
    # The observed state is adopted: the next check starts from it.
    o.check(b"durable", D2, counts, failures)
    assert counts.corrupt_reads == 1
    # A durable delete may not be undone; a later put clears that.
    o.ack_delete(b"durable", durable=True)
    o.check(b"durable", D2, counts, failures)
    assert counts.durable_resurrected == 1 and "came back" in failures[-1]
    o.ack_delete(b"durable", durable=True)
    o.check(b"durable", None, counts, failures)
    assert counts.durable_resurrected == 1


def test_schedule_rotates_every_point_with_black_box_cycles() -> None:
    modes = schedule(None)
    assert set(modes) == {*KILL_POINTS, BLACKBOX}
    assert modes.count(BLACKBOX) == len(KILL_POINTS)
    assert schedule("put.after_flush") == ["put.after_flush"]


def test_short_crash_loop_covers_every_kill_point_and_loses_nothing(tmp_path: Path) -> None:
    modes = [*KILL_POINTS, BLACKBOX]
    report = crashloop(tmp_path, cycles=len(modes), cycle_seconds=4.0, modes=modes, seed=20260)
    reports = [report]
    # A cycle writes until its armed point fires or 4 s pass. On a loaded machine 4 s may hold
    # too few deletes for a seeded coin to come up: give only the points that never fired
    # another cycle each, with a budget that still ends at the first firing.
    missed = sorted(set(KILL_POINTS) - set(report.kill_points_covered))
    if missed:
        reports.append(
            crashloop(
                tmp_path / "again", cycles=len(missed), cycle_seconds=60.0, modes=missed, seed=20261
            )
        )
    covered = {p for r in reports for p in r.kill_points_covered}
    assert covered == set(KILL_POINTS), [r.render() for r in reports]
    for r in reports:
        assert r.failures == [], r.render()
        assert r.ok
        assert r.cycles_survived == r.cycles_requested
        c = r.counts
        assert c.durable_lost == 0 and c.corrupt_reads == 0 and c.fsck_problems == 0
        assert c.objects_checked > 0 and r.ops > 0


def test_cli_writes_a_json_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    rc = main(
        ["--cycles", "1", "--kill-point", "put.after_data_write", "--seed", "5"]
        + ["--cycle-seconds", "2", "--root", str(tmp_path / "run"), "--json", str(out)]
    )
    data = json.loads(out.read_text())
    assert rc == 0 and data["ok"] is True
    assert data["cycles_survived"] == 1 and data["seed"] == 5
    assert data["kill_points_covered"] == {"put.after_data_write": 1}
