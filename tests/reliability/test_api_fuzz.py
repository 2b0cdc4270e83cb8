"""Hostile requests against a LIVE dualbladed: the daemon answers everything and leaks nothing.

The generated requests and the per-request checks live in :mod:`dualblade_tools.fuzz` (the same
harness runs longer as ``python -m dualblade_tools.fuzz``). Here a bounded, derandomized run goes
against a real daemon process; then deletes race gets and puts from several threads and sessions
of two tenants. Criteria: every call gets a status within its deadline, never INTERNAL/UNKNOWN,
and no successful get ever yields a byte its tenant did not write.
"""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest

from dualblade import Client, errors
from dualblade.v1 import dualblade_pb2 as pb
from dualblade_tools import fuzz
from dualblade_tools.daemonproc import DaemonProcess

EXAMPLES = 600
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    with DaemonProcess(tmp_path_factory.mktemp("fuzz") / "d") as d:
        yield d


def test_generated_requests_get_a_status_and_never_leak(daemon: DaemonProcess) -> None:
    with fuzz.FuzzHarness(daemon.socket) as harness:
        counts = fuzz.run(harness, EXAMPLES)
        assert harness.daemon_serves()
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_tail()
    assert counts.failures == []
    assert counts.cross_tenant_leaks == 0
    assert counts.cases == EXAMPLES
    # The run reached the store (not just the validators) and checked real gets.
    assert counts.op_codes["OK"] > 50
    assert counts.gets_checked > 10
    assert counts.rpc_codes["UNAUTHENTICATED"] > 10
    # ... with layer-object ops too (issue 12): each kind succeeded at least once
    assert all(counts.ok_kinds[k] > 0 for k in ("reserve", "append", "read_range")), counts.ok_kinds
    assert all(counts.ok_kinds[k] > 0 for k in ("stat", "unpin", "touch")), counts.ok_kinds
    assert counts.ok_kinds["put_packed"] > 0  # issue 14's


def test_hostile_batch_shapes_are_refused_with_precise_codes(daemon: DaemonProcess) -> None:
    """Fixed cases the fuzzer may only reach rarely: each gets its documented code."""
    with Client.connect(daemon.socket, tenant="alpha", arena_bytes=1 << 20) as c:
        md = c._metadata

        def op_code(op: pb.Op) -> str:
            reply = c._store.Batch(pb.BatchRequest(ops=[op]), metadata=md, timeout=10)
            return CODE_NAMES[reply.results[0].code]

        put = pb.PutOp(key=b"k", arena_offset=0, length=4096)
        assert op_code(pb.Op(put=put)) == "OK"
        assert op_code(pb.Op(put=pb.PutOp(key=b"k", arena_offset=2**64 - 4096, length=4096))) in {
            "OUT_OF_RANGE",
            "INVALID_ARGUMENT",
        }
        assert op_code(pb.Op(put=pb.PutOp(key=b"k", arena_offset=0, length=2**64 - 1))) in {
            "INVALID_ARGUMENT",
            "OUT_OF_RANGE",
        }
        assert op_code(pb.Op(put=pb.PutOp(key=b"k", arena_offset=1, length=10))) in {
            "INVALID_ARGUMENT",
            "OUT_OF_RANGE",
        }
        assert op_code(pb.Op(put=pb.PutOp(key=b"x" * 4096, arena_offset=0, length=10))) == (
            "INVALID_ARGUMENT"
        )
        assert op_code(pb.Op(put=pb.PutOp(key=b"", arena_offset=0, length=10))) == (
            "INVALID_ARGUMENT"
        )
        # Room smaller than the object: refused, nothing written past the room.
        assert op_code(pb.Op(get=pb.GetOp(key=b"k", arena_offset=0, length=100))) != "OK"
        # A batch above the op limit is refused as a whole.
        too_many = pb.BatchRequest(ops=[pb.Op(delete=pb.DeleteOp(key=b"n"))] * 1025)
        with pytest.raises(grpc.RpcError) as err:
            c._store.Batch(too_many, metadata=md, timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # An admin call without any session token is refused before anything else.
        with pytest.raises(grpc.RpcError) as err:
            c.admin.Status(pb.StatusRequest(), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_deletes_racing_gets_across_sessions_and_tenants(daemon: DaemonProcess) -> None:
    """Two tenants, two sessions each: one thread puts and gets, another deletes the same keys.

    Every get either fails with NOT_FOUND or returns exactly the bytes its own tenant wrote (the
    marker byte with a per-put length), never a mix, never the other tenant's bytes.
    """
    keys = [f"race/{i}".encode() for i in range(8)]
    stop = time.monotonic() + 4.0
    problems: list[str] = []
    counts = {"gets": 0, "not_found": 0, "deletes": 0}
    lock = threading.Lock()

    def reader_writer(c: Client, marker: int) -> None:
        buf = bytearray(64 << 10)
        n = 0
        while time.monotonic() < stop:
            key = keys[n % len(keys)]
            n += 1
            size = 4096 + (n * 997) % 60000
            try:
                c.put(key, bytes([marker]) * size, persistent=True)
                got = c.get_into(key, buf)
            except errors.NotFound:
                with lock:
                    counts["not_found"] += 1
                continue
            data = bytes(buf[:got])
            with lock:
                counts["gets"] += 1
                if data.count(marker) != got:
                    problems.append(f"tenant {marker:#x} read {got} bytes, not all its own")

    def deleter(c: Client) -> None:
        n = 0
        while time.monotonic() < stop:
            try:
                c.delete(keys[n % len(keys)])
                with lock:
                    counts["deletes"] += 1
            except errors.NotFound:
                pass
            n += 3

    clients = []
    threads = []
    try:
        for tenant, marker in fuzz.MARKERS.items():
            rw = Client.connect(daemon.socket, tenant=tenant, arena_bytes=1 << 20)
            dl = Client.connect(daemon.socket, tenant=tenant, arena_bytes=1 << 16)
            clients += [rw, dl]
            threads += [
                threading.Thread(target=reader_writer, args=(rw, marker)),
                threading.Thread(target=deleter, args=(dl,)),
            ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a client call hung"
    finally:
        for c in clients:
            c.close()
    assert problems == []
    assert counts["gets"] > 20 and counts["deletes"] > 20, counts
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_random_bytes_on_the_grpc_socket_do_not_hurt(daemon: DaemonProcess) -> None:
    """Not HTTP/2 at all: the gRPC server drops the connection and keeps serving."""
    import socket

    for size in (0, 1, 24, 4096, 65536):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(daemon.socket))
        try:
            s.sendall(os.urandom(size))
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except OSError:
            pass  # reset by the server: fine
        finally:
            s.close()
    with Client.connect(daemon.socket, tenant="alpha", arena_bytes=1 << 16) as c:
        c.put(b"after-garbage", b"\xa1" * 100)
        assert c.get(b"after-garbage") == b"\xa1" * 100


def test_tool_runs_and_reports_counts(daemon: DaemonProcess, capsys) -> None:
    rc = fuzz.main(["--examples", "40", "--socket", str(daemon.socket), "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert '"cases": 40' in out
    assert '"cross_tenant_leaks": 0' in out
