"""Store.Batch over the lease socket, against the real daemon process on real Unix sockets.

Nothing is mocked: the daemon runs as a child (``DaemonProcess``); raw frames are sent on the
lease that ``open_session`` returns, exactly as the SDK's multiplexer sends them.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualblade import Client, errors
from dualblade._handshake import HandshakeResult, open_session
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import wire
from dualblade_tools.daemonproc import DaemonProcess

# The frame layout is the wire contract's (pinned in tests/client/test_wire_contract.py).
REQUEST, REPLY = wire.REQUEST_HEADER, wire.REPLY_HEADER
OK, INVALID_ARGUMENT = wire.Code.OK, wire.Code.INVALID_ARGUMENT
NOT_FOUND, RESOURCE_EXHAUSTED = wire.Code.NOT_FOUND, wire.Code.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("lease") / "d") as d:
        yield d


@pytest.fixture
def raw(daemon: DaemonProcess) -> Iterator[HandshakeResult]:
    with open_session(wire.handshake_socket_path(daemon.socket), "raw", 1 << 16) as hs:
        hs.lease.settimeout(10)
        yield hs


def _connect(daemon: DaemonProcess, tenant: str = "lease") -> Client:
    return Client.connect(daemon.socket, tenant=tenant, arena_bytes=8 << 20)


def _delete_frame(request_id: int, key: bytes) -> bytes:
    request = pb.BatchRequest(ops=[pb.Op(delete=pb.DeleteOp(key=key))])
    return REQUEST.pack(request_id) + request.SerializeToString()


def _reply(lease: socket.socket) -> tuple[int, int, bytes]:
    data = lease.recv(1 << 20)
    assert len(data) >= REPLY.size, data
    request_id, code = REPLY.unpack_from(data)
    return request_id, code, data[REPLY.size :]


def _assert_session_works(lease: socket.socket, request_id: int) -> None:
    lease.send(_delete_frame(request_id, b"missing/after"))
    got_id, code, body = _reply(lease)
    assert (got_id, code) == (request_id, OK)
    (result,) = pb.BatchResponse.FromString(body).results
    assert result.code == NOT_FOUND and "missing/after" in result.message


def test_lease_and_grpc_paths_give_the_same_results(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = os.urandom(5 * 4096 + 7)
    with _connect(daemon) as fast:
        monkeypatch.setenv("DUALBLADE_DATAPLANE", "grpc")
        with _connect(daemon) as slow:
            assert (fast.dataplane, slow.dataplane) == ("lease", "grpc")
            a = fast.put(b"same/a", payload, persistent=True)
            b = slow.put(b"same/b", payload, persistent=True)
            assert (a.size, a.path, a.persistent) == (b.size, b.path, b.persistent)
            assert fast.get(b"same/b") == slow.get(b"same/a") == payload
            for client in (fast, slow):
                with pytest.raises(errors.NotFound, match="nothing/here"):
                    client.get_into(b"nothing/here", bytearray(4096))
            fast.delete_many([b"same/a", b"same/b"])
            with pytest.raises(errors.NotFound):
                slow.stat(b"same/a")


def test_eight_threads_in_flight_each_get_their_own_replies(daemon: DaemonProcess) -> None:
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int, client: Client) -> None:
        try:
            start.wait()
            for i in range(25):
                key = f"t{n}/{i}".encode()
                data = bytes([n]) * (4096 + 512 * i + n)
                assert client.put(key, data).size == len(data)
                assert client.get(key) == data
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)

    with _connect(daemon) as client:
        assert client.dataplane == "lease"
        threads = [threading.Thread(target=worker, args=(n, client)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures[0]


def test_pipelined_raw_frames_are_answered_by_id(raw: HandshakeResult) -> None:
    ids = [1000 + 7 * n for n in range(16)]
    for request_id in ids:  # all sent before any reply is read
        raw.lease.send(_delete_frame(request_id, f"absent/{request_id}".encode()))
    seen = {}
    for _ in ids:
        request_id, code, body = _reply(raw.lease)
        assert code == OK
        (result,) = pb.BatchResponse.FromString(body).results
        seen[request_id] = result.message
    assert sorted(seen) == ids
    for request_id, message in seen.items():
        assert f"absent/{request_id}" in message  # each reply answers its own request


def test_bad_frames_get_invalid_argument_and_the_session_goes_on(raw: HandshakeResult) -> None:
    raw.lease.send(b"abc")  # shorter than the id
    assert _reply(raw.lease)[:2] == (0, INVALID_ARGUMENT)
    raw.lease.send(REQUEST.pack(42) + b"\xff\xff\xff not a protobuf")
    request_id, code, body = _reply(raw.lease)
    assert (request_id, code) == (42, INVALID_ARGUMENT)
    assert b"BatchRequest" in body
    _assert_session_works(raw.lease, 43)


def test_oversize_frame_is_refused_and_the_session_goes_on(raw: HandshakeResult) -> None:
    limit = raw.limits[wire.LEASE_FRAME_MAX_BYTES]
    raw.lease.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit + (1 << 20))
    try:
        raw.lease.send(REQUEST.pack(9) + bytes(limit))
    except OSError as err:  # the kernel's wmem_max is below one oversize datagram here
        pytest.skip(f"cannot send a {limit + 8}-byte datagram on this host: {err}")
    request_id, code, body = _reply(raw.lease)
    assert (request_id, code) == (9, RESOURCE_EXHAUSTED)
    assert str(limit).encode() in body
    _assert_session_works(raw.lease, 10)


def test_a_request_too_big_for_one_frame_falls_back_to_grpc(daemon: DaemonProcess) -> None:
    with _connect(daemon) as client:
        assert client._lease is not None
        client._lease.max_frame_bytes = 16  # every request is now too big for the lease
        assert client.put(b"big/0", b"z" * 9000).size == 9000
        assert client.get(b"big/0") == b"z" * 9000


def test_grpc_is_forced_by_the_environment(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALBLADE_DATAPLANE", "grpc")
    with _connect(daemon) as client:
        assert client.dataplane == "grpc" and client._lease is None
        client.put(b"env/0", b"e" * 4097)
        assert client.get(b"env/0") == b"e" * 4097


def test_a_dead_lease_raises_unavailable(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "d") as d, _connect(d) as client:
        client.put(b"k", b"v" * 100)
        d.terminate()
        with pytest.raises(errors.Unavailable):
            client.get(b"k")


# ---- the SDK multiplexer alone, against a scripted peer on a real socketpair ---------------------


def test_multiplexer_delivers_out_of_order_replies_and_fails_waiters_on_eof() -> None:
    from dualblade._leaseplane import LeasePlane

    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    plane = LeasePlane(ours, 1 << 16)
    results: dict[bytes, object] = {}

    def caller(body: bytes) -> None:
        try:
            results[body] = plane.call(body)
        except errors.DualbladeError as err:
            results[body] = err

    try:
        bodies = [b"a", b"bb", b"ccc", b"dddd"]
        threads = [threading.Thread(target=caller, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        peer.settimeout(5)
        frames = [peer.recv(1 << 16) for _ in bodies]
        by_body = {f[REQUEST.size :]: REQUEST.unpack_from(f)[0] for f in frames}
        assert sorted(by_body) == sorted(bodies) and len(set(by_body.values())) == 4
        # Answer in reverse order; "dddd" gets an error code, "a" gets no reply at all.
        peer.send(REPLY.pack(by_body[b"dddd"], NOT_FOUND) + b"no such key")
        for body in (b"ccc", b"bb"):
            peer.send(REPLY.pack(by_body[body], OK) + body.upper())
        for t in threads[1:]:
            t.join(timeout=5)
        assert results[b"bb"] == b"BB" and results[b"ccc"] == b"CCC"
        assert isinstance(results[b"dddd"], errors.NotFound)
        assert b"a" not in results  # still waiting
        peer.close()  # the daemon goes away: the waiting call fails
        threads[0].join(timeout=5)
        assert isinstance(results[b"a"], errors.Unavailable)
        with pytest.raises(errors.Unavailable):
            plane.call(b"later")
    finally:
        plane.close()
        ours.close()


def test_closing_the_multiplexer_wakes_every_waiting_call() -> None:
    from dualblade._leaseplane import LeasePlane

    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    plane = LeasePlane(ours, 1 << 16)
    failures: list[BaseException] = []

    def caller() -> None:
        try:
            plane.call(b"never answered")
        except errors.Unavailable as err:
            failures.append(err)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        peer.settimeout(5)
        for _ in threads:
            peer.recv(1 << 16)  # all three are sent and waiting
        plane.close()
        for t in threads:
            t.join(timeout=5)
        assert len(failures) == 3 and all("closed" in str(f) for f in failures)
    finally:
        ours.close()
        peer.close()
