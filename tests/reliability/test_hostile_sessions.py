"""Issue 15, the session half: one hostile local user cannot exhaust or impersonate.

Real daemon (run as root by this test), real sockets, and the attacker a real other uid: a child
``python -m dualblade_tools.hostile`` that imports everything and then drops to uid 65534
(:mod:`dualblade_tools.hostile`). Each test runs one attack of the issue's findings 1, 2 and 4,
asserts that the limit holds, and checks meanwhile that root's handshake and data calls keep
working (root's connect time bounded against an unloaded connect measured in the same test),
that root's persistent object is intact, and that the daemon is still up.
"""

from __future__ import annotations

import contextlib
import os
import stat
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualblade import Client, errors
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import wire
from dualblade_tools import hostile
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.service import acl
from privdrop_utils import NOBODY, open_to_others, shared_tmpdir

MiB = 1 << 20
ATTACKER = NOBODY
CROWN = b"crown-jewels"
CROWN_VALUE = os.urandom(20_000)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the attacker is started as root and drops to uid 65534"
)


@pytest.fixture
def make_daemon() -> Iterator:
    """A root daemon in a directory uid 65534 can traverse (pytest's tmp dirs are 0700), its
    shared sockets opened to others (the daemon makes them 0660 for its group)."""
    with contextlib.ExitStack() as stack:

        def make(config: str) -> DaemonProcess:
            root = stack.enter_context(shared_tmpdir("dbhostile-"))
            (root / "d.toml").write_text(config)
            d = DaemonProcess(root / "d", namespace_size="64MiB", config=root / "d.toml")
            d.start()
            stack.callback(d.terminate)
            open_to_others(d.socket, d.socket.parent / "handshake.sock")
            return d

        yield make


def _connect_times(d: DaemonProcess, n: int) -> list[float]:
    """Seconds per root ``Client.connect`` plus one data call (put+get), ``n`` times."""
    times = []
    for i in range(n):
        began = time.perf_counter()
        with Client.connect(d.socket, tenant="root-probe", arena_bytes=MiB) as c:
            c.put(f"probe{i}".encode(), b"p" * 4096)
            assert c.get(f"probe{i}".encode()) == b"p" * 4096
            times.append(time.perf_counter() - began)  # close() is not part of connecting
    return times


def _assert_root_unhurt(d: DaemonProcess, keeper: Client, unloaded: list[float]) -> list[float]:
    """Root connects and does I/O within a bound set by the unloaded connects; the daemon lives."""
    loaded = _connect_times(d, 10)
    base = statistics.median(unloaded)
    # Generous for a shared 2-core machine, yet far below the seconds issue 15 measured.
    assert statistics.median(loaded) <= 5 * base + 0.1, (loaded, unloaded)
    assert max(loaded) <= 10 * base + 0.5, (loaded, unloaded)
    assert keeper.get(CROWN) == CROWN_VALUE
    assert d.proc is not None and d.proc.poll() is None, d.log_tail()
    return loaded


def _daemon_memory(d: DaemonProcess) -> dict[str, int]:
    assert d.proc is not None
    out = {}
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _root_session(d: DaemonProcess) -> Client:
    keeper = Client.connect(d.socket, tenant="root", arena_bytes=MiB)
    keeper.put(CROWN, CROWN_VALUE, persistent=True)
    return keeper


def _sessions_open(keeper: Client) -> int:
    return keeper.admin_call("Status", pb.StatusRequest()).sessions


def _sessions_settle_at(keeper: Client, n: int, seconds: float = 5.0) -> int:
    """The session count once it reaches ``n``, or after ``seconds``.

    A client's close returns before the daemon has dropped the session, so a count taken right
    after a close may still include it; wait for the count rather than read it once.
    """
    deadline = time.monotonic() + seconds
    while (open_now := _sessions_open(keeper)) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    return open_now


# ---- finding 1: arenas -------------------------------------------------------------------------


def test_arena_attack_stops_at_the_per_uid_cap_and_commits_nothing_up_front(make_daemon) -> None:
    d = make_daemon('[limits]\nmax_sessions = 64\n[admission]\nper_uid_arena_bytes = "256MiB"\n')
    keeper = _root_session(d)
    unloaded = _connect_times(d, 10)
    attacker = hostile.spawn(d.socket, ["arenas"], extra=["--arena-bytes", str(64 * MiB)])
    try:
        arenas = attacker.ready["arenas"]
        assert arenas["opened"] == 4, arenas  # 4 x 64 MiB = the 256 MiB per-uid cap
        assert "per_uid_arena_bytes" in arenas["refusal"], arenas
        assert arenas["touched_bytes"] == 256 * MiB  # every page of every arena committed
        # The arenas were admitted, created and granted fast: no prefault on the daemon's side.
        assert arenas["seconds"] < 5, arenas
        # The client's touches are not the daemon's memory: its shared RSS stays far below them.
        assert _daemon_memory(d)["RssShmem"] < 64 * MiB, _daemon_memory(d)
        # A 4 GiB hello (the largest arena) is refused at admission, before any allocation.
        big = hostile.spawn(d.socket, ["arenas"], extra=["--arena-bytes", str(4 << 30)])
        assert big.ready["arenas"]["opened"] == 0, big.ready
        assert "per_uid_arena_bytes" in big.ready["arenas"]["refusal"], big.ready
        big.finish()
        _assert_root_unhurt(d, keeper, unloaded)
        # Root is not bound by the per-uid cap.
        with Client.connect(d.socket, tenant="big", arena_bytes=512 * MiB) as big:
            assert big.arena.size == 512 * MiB
    finally:
        attacker.finish()
    keeper.close()


# ---- finding 2: the session table --------------------------------------------------------------


def test_session_flood_stops_at_the_per_uid_limit(make_daemon) -> None:
    d = make_daemon("[limits]\nmax_sessions = 64\n")  # per_uid_sessions defaults to 64 // 4
    keeper = _root_session(d)
    unloaded = _connect_times(d, 10)
    attacker = hostile.spawn(d.socket, ["sessions"])
    try:
        flood = attacker.ready["sessions"]
        assert flood["opened"] == 16, flood
        assert "per_uid_sessions" in flood["refusal"], flood
        _assert_root_unhurt(d, keeper, unloaded)
    finally:
        attacker.finish()
    keeper.close()


def test_session_flood_leaves_the_reserve_to_root_and_dbctl(make_daemon) -> None:
    """With the per-uid limit opened up to the whole table, the reserve still holds."""
    d = make_daemon(
        "[limits]\nmax_sessions = 32\n[admission]\nper_uid_sessions = 32\nreserved_sessions = 4\n"
    )
    keeper = _root_session(d)
    unloaded = _connect_times(d, 5)
    assert _sessions_settle_at(keeper, 1) == 1  # a probe still closing would take a slot
    attacker = hostile.spawn(d.socket, ["sessions"])
    try:
        flood = attacker.ready["sessions"]
        assert flood["opened"] == 32 - 4 - 1, flood  # the reserve, and root's own session
        assert "reserved for root" in flood["refusal"], flood
        assert _sessions_open(keeper) == 32 - 4
        _assert_root_unhurt(d, keeper, unloaded)
        # Root can use the whole reserve, and then the table is full for everyone.
        extra = [Client.connect(d.socket, tenant=f"r{i}", arena_bytes=MiB) for i in range(3)]
        dbctl = Client.connect(d.socket, tenant="dbctl", arena_bytes=4096)
        assert dbctl.admin_call("Status", pb.StatusRequest()).sessions == 32
        with pytest.raises(errors.ResourceExhausted, match="too many sessions"):
            Client.connect(d.socket, tenant="one-more", arena_bytes=MiB)
        for c in [*extra, dbctl]:
            c.close()
    finally:
        attacker.finish()
    keeper.close()


# ---- finding 1, third bullet: hello and hang up ------------------------------------------------


def test_hello_and_hang_up_flood_finishes_no_session(make_daemon) -> None:
    d = make_daemon("[limits]\nmax_sessions = 64\n")
    keeper = _root_session(d)
    unloaded = _connect_times(d, 10)
    assert _sessions_settle_at(keeper, 1) == 1  # the keeper alone: every probe has closed
    attacker = hostile.spawn(
        d.socket, ["hangup"], extra=["--seconds", "3", "--hangup-arena-bytes", str(MiB)]
    )
    try:
        assert attacker.ready["hangup"]["hellos_sent"] > 100, attacker.ready
    finally:
        attacker.finish()
    # Meanwhile (the flood runs in the attacker's own thread while spawn waits) and after:
    _assert_root_unhurt(d, keeper, unloaded)
    assert _sessions_settle_at(keeper, 1) == 1  # no hello-and-hang-up left a session behind
    log = d.log_path.read_text() if d.log_path else ""
    assert "vanished" in log  # hang-ups were noticed before any allocation or reply
    assert log.count("\n") < 2000, "a flood of hellos must not become a flood of log lines"
    keeper.close()


def test_root_connects_while_a_hang_up_flood_runs(make_daemon) -> None:
    """Root's connects measured *during* the flood, not after it."""
    d = make_daemon("[limits]\nmax_sessions = 64\n")
    keeper = _root_session(d)
    unloaded = _connect_times(d, 10)
    proc = hostile.start(
        d.socket, ["hangup"], extra=["--seconds", "6", "--hangup-arena-bytes", str(MiB)]
    )
    try:
        time.sleep(1.0)  # the flood is under way (the attacker imports in well under a second)
        assert proc.poll() is None
        _assert_root_unhurt(d, keeper, unloaded)
    finally:
        attacker = hostile.wait_ready(proc)
        attacker.finish()
    keeper.close()


# ---- finding 4: tokens -------------------------------------------------------------------------


def test_a_stolen_root_token_is_useless_to_another_uid(make_daemon) -> None:
    d = make_daemon("")
    keeper = _root_session(d)
    root_socket = keeper._hs.grpc_socket
    assert root_socket is not None and Path(root_socket).parent.stat().st_mode & 0o777 == 0o700
    attacker = hostile.spawn(
        d.socket,
        ["token"],
        env={
            "DUALBLADE_STOLEN_TOKEN": keeper._hs.token,
            "DUALBLADE_STOLEN_KEY": CROWN.decode(),
            "DUALBLADE_VICTIM_SOCKET": root_socket,
        },
    )
    try:
        got = attacker.ready["token"]
        assert "error" not in got, got
        # The shared socket refuses every token, naming why.
        for call in ("shared_stat", "shared_admin"):
            assert got[call].startswith("UNAUTHENTICATED"), got
            assert "shared gRPC socket" in got[call], got
        # The attacker's own socket refuses a token of another uid's session.
        for call in ("own_stat", "own_admin"):
            assert got[call].startswith("UNAUTHENTICATED"), got
            assert "another uid" in got[call], got
        # Root's socket cannot even be reached from uid 65534.
        for call in ("victim_stat", "victim_admin"):
            assert got[call].startswith("UNAVAILABLE"), got
        # ... while the attacker's own token works on its own socket (the refusals are real).
        assert got["own_token_on_own_socket"].startswith("NOT_FOUND"), got
        own_dir = Path(d.socket.parent, "uid", str(ATTACKER))
        assert (own_dir.stat().st_uid, own_dir.stat().st_mode & 0o777) == (0, 0o710)
        assert acl.read_named_entries(str(own_dir))["users"] == {ATTACKER: acl.X}
        assert keeper.get(CROWN) == CROWN_VALUE
        assert keeper.admin_call("Status", pb.StatusRequest()).sessions >= 2
    finally:
        attacker.finish()
    keeper.close()


# ---- the admin lane ----------------------------------------------------------------------------


def test_the_admin_lane_is_closed_to_other_uids_even_when_opened_up(make_daemon) -> None:
    d = make_daemon("")
    lane = Path(wire.admin_handshake_socket_path(d.socket))
    assert stat.S_IMODE(lane.parent.stat().st_mode) in (0o700, 0o750)
    attacker = hostile.spawn(d.socket, ["adminlane"])
    got = attacker.ready["adminlane"]["result"]
    attacker.finish()
    assert got.startswith("PERMISSION_DENIED") and "not allowed to connect" in got, got
    # Loosen the directory by mistake: the daemon itself still refuses a non-admin peer.
    os.chmod(lane.parent, 0o755)
    os.chmod(lane, 0o666)
    attacker = hostile.spawn(d.socket, ["adminlane"])
    got = attacker.ready["adminlane"]["result"]
    attacker.finish()
    assert got.startswith("PERMISSION_DENIED") and "admin lane" in got, got
    # Root's SDK uses the lane: with the shared handshake socket moved away, it still connects.
    shared = d.socket.parent / "handshake.sock"
    shared.rename(shared.with_suffix(".away"))
    try:
        keeper = _root_session(d)
        assert keeper.tenant == "0/root" and keeper.get(CROWN) == CROWN_VALUE
        keeper.close()
    finally:
        shared.with_suffix(".away").rename(shared)
