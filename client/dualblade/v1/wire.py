"""The wire contract between dualbladed and the SDK, beyond what the protobuf schema says.

Both sides import this module (the daemon may import ``dualblade.v1.*``, the shared wire package;
neither side imports the other's private modules), so a constant here cannot drift between them.
It is hand-written, unlike its generated neighbours, and ``tools/gen_protos.sh`` never touches it.

Where the daemon listens. The gRPC socket is ``<runtime dir>/grpc.sock``; the handshake socket
is ``handshake.sock`` *in the gRPC socket's directory*, so a client that knows the one finds the
other. The runtime directory is ``/run/dualblade`` for root and ``$XDG_RUNTIME_DIR/dualblade``
(else ``/tmp/dualblade-<uid>``) for anyone else.

The handshake (protocol v1). One JSON datagram each way on an ``AF_UNIX``/``SOCK_SEQPACKET``
socket: the hello is at most :data:`HELLO_MAX_BYTES`, the reply (which carries the arena memfd
with SCM_RIGHTS) at most :data:`REPLY_MAX_BYTES`. The reply's ``alignment`` is
:data:`ALIGNMENT` and its ``limits`` announce the lease data plane as
:data:`LEASE_FRAME_MAX_BYTES` (absent: gRPC only). Field-by-field rules are in
``dualbladed.sessions.hello``.

Lease frames. After the handshake the connection is the session's lease, and each datagram on
it is one frame (integers little-endian)::

    request  (client -> daemon)  u64 request_id | serialized dualblade.v1.BatchRequest
    reply    (daemon -> client)  u64 request_id | u32 code | BatchResponse (code OK) or UTF-8 text

``code`` is a :class:`Code` (google.rpc.Code), as in ``BatchResult.code``.

Layer objects (``ReserveOp``/``AppendOp``/``ReadRangeOp``). Their integrity is a crc32c per
:data:`LAYER_CHUNK_BYTES` chunk of the object's bytes (the last chunk may be shorter); the daemon
verifies every chunk a ranged read covers, so the chunk size is part of the contract.

The shared arena. Both processes map the same memfd; every offset named on the wire is a
multiple of :data:`ALIGNMENT` (a page, and a multiple of every logical block size the daemon
accepts, so O_DIRECT on arena slices is always legal). Both sides unmap it by
:func:`close_mapping`'s rule.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import os
import socket
import struct

__all__ = [
    "ADMIN_DIR_NAME",
    "ALIGNMENT",
    "GRPC_SOCKET_NAME",
    "GRPC_UNIX_PATH_MAX",
    "HANDSHAKE_SOCKET_NAME",
    "HELLO_MAX_BYTES",
    "LAYER_CHUNK_BYTES",
    "LEASE_FRAME_MAX_BYTES",
    "PUT_PACKED",
    "PROTOCOL_VERSION",
    "REPLY_HEADER",
    "REPLY_MAX_BYTES",
    "REQUEST_HEADER",
    "UID_DIR_NAME",
    "UNIX_PATH_MAX",
    "admin_handshake_socket_path",
    "reachable_path",
    "Code",
    "close_mapping",
    "code_name",
    "default_runtime_dir",
    "default_socket_path",
    "handshake_socket_path",
    "size_socket_buffers",
]

# ------------------------------------------------------------------------------ where

GRPC_SOCKET_NAME = "grpc.sock"
HANDSHAKE_SOCKET_NAME = "handshake.sock"
#: The admin lane: ``<runtime dir>/admin/handshake.sock``, a second handshake socket in a
#: directory only root and the admin group can enter, so a flood of connections from one user
#: on the shared handshake socket cannot delay root's or dbctl's handshakes.
ADMIN_DIR_NAME = "admin"
#: Per-uid gRPC sockets: ``<runtime dir>/uid/<uid>/grpc.sock``, named in the handshake reply.
UID_DIR_NAME = "uid"


def default_runtime_dir() -> str:
    """The directory of the daemon's sockets for the effective user (see the module doc)."""
    if os.geteuid() == 0:
        return "/run/dualblade"
    runtime_base = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_base:
        return os.path.join(runtime_base, "dualblade")
    return f"/tmp/dualblade-{os.getuid()}"


def default_socket_path() -> str:
    """The gRPC socket a daemon run by this user listens on unless told otherwise."""
    return os.path.join(default_runtime_dir(), GRPC_SOCKET_NAME)


def handshake_socket_path(grpc_socket: str | os.PathLike[str]) -> str:
    """The handshake socket that accompanies ``grpc_socket`` by default."""
    return os.path.join(os.path.dirname(os.fspath(grpc_socket)), HANDSHAKE_SOCKET_NAME)


#: The longest path a ``sockaddr_un`` holds (``sun_path`` is 108 bytes with the NUL).
UNIX_PATH_MAX = 107
#: The longest ``unix://`` path gRPC (1.84) binds or connects: measured, it refuses 106 and 107
#: bytes ("Path name should not have more than 107 characters") that ``socket.bind`` takes.
GRPC_UNIX_PATH_MAX = 105


def reachable_path(
    path: str | os.PathLike[str], limit: int = UNIX_PATH_MAX
) -> tuple[str, int | None]:
    """``(path, None)``, or for a path longer than ``limit`` bytes (``sockaddr_un``'s, or
    :data:`GRPC_UNIX_PATH_MAX` for a gRPC address), ``(/proc/self/fd/<fd>/<name>, fd)`` where
    ``fd`` is an ``O_PATH`` fd of the socket's directory. Binding or connecting with the short
    form reaches the same socket; the caller keeps ``fd`` open as long as it uses the short form
    (a server: until it has stopped) and closes it afterwards.
    """
    where = os.fspath(path)
    if len(os.fsencode(where)) <= limit:
        return where, None
    fd = os.open(os.path.dirname(where) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{os.path.basename(where)}", fd


def admin_handshake_socket_path(grpc_socket: str | os.PathLike[str]) -> str:
    """The admin lane's handshake socket next to ``grpc_socket`` (see :data:`ADMIN_DIR_NAME`)."""
    directory = os.path.dirname(os.fspath(grpc_socket))
    return os.path.join(directory, ADMIN_DIR_NAME, HANDSHAKE_SOCKET_NAME)


# ------------------------------------------------------------------------------ handshake

PROTOCOL_VERSION = 1
#: The largest hello the daemon reads; longer ones are refused.
HELLO_MAX_BYTES = 4096
#: The largest handshake reply a client reads (the limits table makes it longer than a hello).
REPLY_MAX_BYTES = 65536
#: The arena alignment announced in the handshake reply; see the module doc.
ALIGNMENT = 4096
#: The ``limits`` key that announces the lease data plane and its largest frame.
LEASE_FRAME_MAX_BYTES = "lease_frame_max_bytes"
#: The ``limits`` key that announces ``PutPackedOp`` (many puts in one op, issue 14); absent on
#: older daemons, whose clients send one ``PutOp`` per object.
PUT_PACKED = "put_packed"

# ------------------------------------------------------------------------------ layer objects

#: Bytes per crc32c-checksummed chunk of a layer object; see the module doc.
LAYER_CHUNK_BYTES = 1 << 20

# ------------------------------------------------------------------------------ lease frames

REQUEST_HEADER = struct.Struct("<Q")  # request_id
REPLY_HEADER = struct.Struct("<QI")  # request_id, code
#: Room for the kernel's per-datagram overhead on top of the largest frame.
_SOCKET_BUFFER_SLACK = 64 << 10


class Code(enum.IntEnum):
    """google.rpc.Code: the status of a lease reply and of each ``BatchResult``.

    The same numbers as ``grpc.StatusCode`` (a test keeps the two equal); an enum of its own so
    the daemon's transport can speak it without importing grpc.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


def code_name(value: int) -> str:
    """The name of a code received on the wire; ``"UNKNOWN"`` for a number we do not know."""
    try:
        return Code(value).name
    except ValueError:
        return Code.UNKNOWN.name


def size_socket_buffers(sock: socket.socket, max_frame_bytes: int) -> None:
    """Let one frame of ``max_frame_bytes`` fit the socket (an AF_UNIX datagram is bounded by
    the sender's SO_SNDBUF). Best effort: the kernel caps the value at ``net.core.wmem_max``."""
    size = max_frame_bytes + _SOCKET_BUFFER_SLACK
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


# ------------------------------------------------------------------------------ shared memory


def close_mapping(mapping: mmap.mmap) -> bool:
    """Unmap ``mapping`` now if nothing exports it; return False when unmapping is deferred.

    ``mmap.close()`` raises ``BufferError`` while any memoryview (or a tensor made with
    ``torch.frombuffer``) still points into the mapping. Forcing the unmap would leave those
    views pointing at unmapped memory (a segfault waiting to happen), so the rule on both sides
    of the arena is: try to unmap now, and if the mapping is still exported, drop our reference
    and let CPython unmap it when the last view dies. The daemon's relocation bounce buffers
    follow the same rule.
    """
    try:
        mapping.close()
    except BufferError:
        return False
    return True
