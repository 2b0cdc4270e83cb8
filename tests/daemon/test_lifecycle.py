"""SIGTERM against the real daemon: STOPPING=1 to systemd, a drain that keeps acknowledged data.

The daemon runs as a child process (``DaemonProcess(keep_notify=True)``), so the test owns its
``NOTIFY_SOCKET`` for the daemon's whole life and sees every sd_notify message, as systemd would.
A client streams durable persistent puts (``put_many`` calls of several MiB each) and the daemon
gets SIGTERM while one is in flight, over each data plane: the lease socket (the default) and
gRPC (``DUALBLADE_DATAPLANE=grpc``). Then:

- the writer never hangs: the call in flight completes or raises a :mod:`dualblade.errors` type;
- the daemon exits 0 within the drain grace period (plus the close-down);
- STOPPING=1 came after READY=1, and the notify socket never failed (no sd_notify warning);
- after a restart every acknowledged object is there with its bytes, an unacknowledged one is
  either absent or whole, and an offline fsck (with data checksums) of the state is clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dualblade import Client, errors
from dualblade.client import DATAPLANE_ENV
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.server import GRACE_S
from wait_utils import SchedulerLag

OBJECT_BYTES = 4 << 20
OBJECTS_PER_CALL = 2
CALLS = 12  # 96 MiB in all: far more than is written before the SIGTERM lands
ARENA_BYTES = 32 << 20
#: SIGTERM to exit: the gRPC drain may take GRACE_S, then sessions end and the store closes.
EXIT_DEADLINE_S = GRACE_S + 20.0
#: an idle daemon has nothing to drain: it must not sit out the grace period.
IDLE_EXIT_DEADLINE_S = GRACE_S / 2
WRITER_JOIN_S = EXIT_DEADLINE_S + 10.0


@dataclass
class Writer:
    """The client's side: which put_many calls were acknowledged, and how the stream ended."""

    groups: list[list[tuple[bytes, bytes]]]
    acked: dict[bytes, bytes] = field(default_factory=dict)
    calls_done: int = 0
    error: BaseException | None = None
    first_acked: threading.Event = field(default_factory=threading.Event)
    next_call_started: threading.Event = field(default_factory=threading.Event)

    def run(self, client: Client) -> None:
        try:
            for i, group in enumerate(self.groups):
                if i == 1:
                    self.next_call_started.set()
                infos = client.put_many(group, persistent=True, durable=True)
                assert [(o.key, o.size) for o in infos] == [(k, len(v)) for k, v in group]
                self.acked.update(group)
                self.calls_done += 1
                self.first_acked.set()
        except BaseException as err:  # noqa: BLE001 - judged by the test thread
            self.error = err
        finally:
            self.first_acked.set()
            self.next_call_started.set()


def _payloads() -> list[list[tuple[bytes, bytes]]]:
    return [
        [(f"drain/{c:02d}/{j}".encode(), os.urandom(OBJECT_BYTES)) for j in range(OBJECTS_PER_CALL)]
        for c in range(CALLS)
    ]


def _connect(d: DaemonProcess, transport: str, monkeypatch: pytest.MonkeyPatch) -> Client:
    """A client whose Store.Batch goes over ``transport`` (the env var is read at connect)."""
    with monkeypatch.context() as m:
        if transport == "grpc":
            m.setenv(DATAPLANE_ENV, "grpc")
        else:
            m.delenv(DATAPLANE_ENV, raising=False)
        client = Client.connect(d.socket, tenant="drain", arena_bytes=ARENA_BYTES)
    assert client.dataplane == transport
    return client


def _states(messages: list[str]) -> list[str]:
    """The ``KEY=VALUE`` lines of every notify message, in the order they arrived."""
    return [line for msg in messages for line in msg.split("\n") if line]


def _assert_ready_then_stopping(d: DaemonProcess) -> None:
    states = _states(d.notify_messages())
    assert "READY=1" in states, states
    assert "STOPPING=1" in states, f"no STOPPING=1 after SIGTERM: {states}"
    assert states.index("READY=1") < states.index("STOPPING=1"), states
    log = d.log_path.read_text(errors="replace") if d.log_path else ""
    assert "sd_notify" not in log, "the daemon could not notify:\n" + d.log_tail()


def _fsck(d: DaemonProcess) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "dualblade_tools.dbctl", "--json", "fsck"]
        + ["--state-dir", str(d.state_dir), "--namespace", str(d.namespace_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True, report
    return report


@pytest.mark.parametrize("transport", ["lease", "grpc"])
def test_sigterm_mid_put_many_drains_and_keeps_acknowledged_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    d = DaemonProcess(tmp_path / "d", keep_notify=True).start()
    try:
        writer = Writer(_payloads())
        client = _connect(d, transport, monkeypatch)
        try:
            thread = threading.Thread(target=writer.run, args=(client,), daemon=True)
            thread.start()
            # The daemon is receiving: one call is acknowledged and the next one is under way.
            assert writer.first_acked.wait(60), "the first put_many never returned"
            assert writer.error is None, f"put_many failed before the SIGTERM: {writer.error!r}"
            assert writer.next_call_started.wait(60)
            d.proc.send_signal(signal.SIGTERM)
            sigterm_at = time.monotonic()

            code = d.proc.wait(EXIT_DEADLINE_S)
            exit_s = time.monotonic() - sigterm_at
            thread.join(WRITER_JOIN_S)
            assert not thread.is_alive(), "put_many hung after the daemon stopped"
        finally:
            client.close()
        assert code == 0, f"exit code {code} after SIGTERM:\n{d.log_tail()}"
        assert exit_s < EXIT_DEADLINE_S
        # The stream was cut by the shutdown (else this test did not test a drain), and the cut
        # surfaced as a typed SDK error, not a raw gRPC/socket exception or an assertion.
        assert writer.calls_done < CALLS, "every put_many finished before the SIGTERM took effect"
        assert isinstance(writer.error, errors.DualbladeError), repr(writer.error)
        d.terminate()  # already exited: closes the notify socket after a last drain
        _assert_ready_then_stopping(d)

        d.start()
        present = {}
        with _connect(d, transport, monkeypatch) as c:
            for key, value in writer.acked.items():
                assert c.get(key) == value, f"acknowledged {key!r} lost or changed by the drain"
            for group in writer.groups:
                for key, value in group:
                    if key in writer.acked:
                        present[key] = value
                        continue
                    try:
                        got = c.get(key)
                    except errors.NotFound:
                        continue
                    assert got == value, f"unacknowledged {key!r} is present but torn"
                    present[key] = value
            assert sorted(o.key for o in c.list(b"drain/")) == sorted(present)
        assert d.terminate() == 0
        report = _fsck(d)
        assert report["objects"] == len(present)
    finally:
        d.kill()


@pytest.mark.parametrize("with_client", [False, True], ids=["no-session", "idle-session"])
def test_idle_daemon_sigterm_sends_stopping_and_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_client: bool
) -> None:
    d = DaemonProcess(tmp_path / "d", keep_notify=True).start()
    client = None
    try:
        if with_client:
            client = _connect(d, "lease", monkeypatch)
            client.put(b"idle", b"i" * 5000, persistent=True)
        assert "STOPPING=1" not in _states(d.notify_messages())
        with SchedulerLag() as lag:
            d.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = d.proc.wait(EXIT_DEADLINE_S)
            elapsed = time.monotonic() - started
        assert code == 0, d.log_tail()
        # Half the grace period, plus the worst wake-up delay a loaded machine added meanwhile.
        assert elapsed < IDLE_EXIT_DEADLINE_S + lag.worst, (
            f"an idle daemon took {elapsed:.2f} s to stop (scheduler lag {lag.worst:.3f} s)"
        )
        if client is not None:
            # The session's lease was ended by the shutdown: a call fails with a typed error.
            with pytest.raises(errors.Unavailable):
                client.put(b"after", b"x")
        d.terminate()
        _assert_ready_then_stopping(d)
    finally:
        if client is not None:
            client.close()
        d.kill()
