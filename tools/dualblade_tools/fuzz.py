"""Hostile-request fuzzing of a live dualbladed: ``python -m dualblade_tools.fuzz``.

The harness talks raw gRPC to a real daemon (started with :class:`DaemonProcess` unless
``--socket`` names a running one), with requests that Hypothesis generates: random keys of 0..4096
bytes, arena offsets and lengths anywhere in ``[0, 2**64)`` (misaligned, past the arena, huge),
unknown residency-path enum values, empty ops, layer-object ops (reserve with random capacities
and path names, append with and without ``expect_size``, read_range at random offsets), stat ops
with random hit pins (``pin_ms`` up to the uint32 max), unpins and touches, durable deletes, random op
mixes of up to 8 ops per batch, and missing, malformed, unknown or stale session tokens.

Pass criteria, checked on every request:

- every call returns a status within a deadline (no hang) and the status is never INTERNAL or
  UNKNOWN (an unexpected exception in the daemon) nor UNAVAILABLE (a dead daemon);
- **no tenant ever receives another tenant's bytes.** Each tenant's arena is filled with that
  tenant's marker byte before every request, so every object it can store consists of that byte
  only, and every byte a successful get or read_range places must be the caller's marker. Another tenant's
  marker, or stale bytes of the namespace (zeros of a never-written block), count as a leak. A
  put and a get in one batch may share an arena range: the get writes marked bytes, so the put
  still stores only marked bytes;
- after the run the daemon process is alive and serves a fresh session.

The same :class:`FuzzHarness` backs the bounded run in ``tests/reliability/test_api_fuzz.py``;
this command runs it longer and prints the counts (cases, ops, status codes, leaks) as a table or
``--json``. Exit status 0 means every criterion held.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from dualblade import Client
from dualblade.arena import Slot
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1.wire import code_name
from dualblade_tools.daemonproc import DaemonProcess

#: Arena of each fuzzing session; small so that offsets past it are easy to hit.
ARENA_BYTES = 1 << 20
#: Deadline of every fuzzed RPC: a reply must come well within it.
DEADLINE_S = 10.0
#: Codes that mean the daemon broke (a bug, a hang or a dead process), never a valid reply.
BAD_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
#: Marker byte per tenant label: every byte a tenant stores is its marker.
MARKERS = {"alpha": 0xA1, "beta": 0xB2}
#: A few keys every tenant uses, so that gets and deletes hit objects (of both tenants).
COMMON_KEYS = [b"k0", b"k1", b"seq/0/layer/1/K", b"\x00", b"x" * 1024]

U64 = st.integers(min_value=0, max_value=2**64 - 1)


def _mostly(well_formed: st.SearchStrategy[Any], *hostile: st.SearchStrategy[Any]) -> Any:
    """Well-formed 7 times in 10 (so most ops reach the store), hostile otherwise.

    The choice is an integer, not ``one_of``, because Hypothesis favours boundary values and
    would otherwise make nearly every batch fail early; shrinking still heads for well-formed.
    """

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        mode = draw(st.integers(min_value=0, max_value=9))
        if mode < 7:
            return draw(well_formed)
        return draw(hostile[mode % len(hostile)])

    return pick()


KEYS = _mostly(st.sampled_from(COMMON_KEYS), st.binary(min_size=0, max_size=4096))
OFFSETS = _mostly(
    st.integers(min_value=0, max_value=ARENA_BYTES // 4096 - 1).map(lambda i: i * 4096),
    st.integers(min_value=0, max_value=ARENA_BYTES + 8192),
    U64,
)
LENGTHS = _mostly(
    st.integers(min_value=1, max_value=64 << 10),
    st.just(0),
    st.integers(min_value=ARENA_BYTES - 4096, max_value=ARENA_BYTES + 4096),
    U64,
)
#: A get's room: the largest well-formed put fits, so gets of existing keys succeed.
ROOMS = _mostly(
    st.just(64 << 10),
    st.integers(min_value=0, max_value=64 << 10),
    st.integers(min_value=ARENA_BYTES - 4096, max_value=ARENA_BYTES + 4096),
    U64,
)
#: Values 0..2 are defined; 3..7 and 2**31-1 are unknown (proto3 enums are open). An unknown
#: value fails the whole Batch call, so it comes up once in 20 ops.
PATHS = _mostly(
    st.integers(min_value=0, max_value=2),
    st.integers(min_value=0, max_value=2),
    st.integers(min_value=3, max_value=7) | st.just(2**31 - 1),
)


@st.composite
def ops(draw: st.DrawFn) -> pb.Op:
    kind = draw(st.integers(min_value=0, max_value=27))
    if kind == 7:  # issue 14: many puts in one op (keys and lengths may disagree, repeat, ...)
        return pb.Op(
            put_packed=pb.PutPackedOp(
                keys=draw(st.lists(KEYS, max_size=6)),
                lengths=draw(st.lists(LENGTHS, max_size=6)),
                arena_offset=draw(OFFSETS),
                persistent=draw(st.booleans()),
                durable=draw(st.booleans()),
                path=draw(PATHS),
            )
        )
    if kind < 8:
        return pb.Op(
            put=pb.PutOp(
                key=draw(KEYS),
                arena_offset=draw(OFFSETS),
                length=draw(LENGTHS),
                persistent=draw(st.booleans()),
                durable=draw(st.booleans()),
                path=draw(PATHS),
            )
        )
    if kind < 16:
        return pb.Op(get=pb.GetOp(key=draw(KEYS), arena_offset=draw(OFFSETS), length=draw(ROOMS)))
    if kind < 19:
        return pb.Op(delete=pb.DeleteOp(key=draw(KEYS), durable=draw(st.booleans())))
    if kind == 19:
        return pb.Op()
    return draw(layer_ops())


#: Keys mostly only layer ops use (puts and deletes of COMMON_KEYS would replace the objects
#: before a read_range could find them), sometimes any key, ordinary objects' included.
LAYER_KEYS = [b"layer/0/K", b"layer/0/V"]
LAYER_KEY_DRAW = _mostly(st.sampled_from(LAYER_KEYS), KEYS)

#: A reserve's path is a string: the known names, empty (the arbiter decides) or junk, which
#: fails the whole Batch call with INVALID_ARGUMENT.
PATH_NAMES = _mostly(
    st.sampled_from(["", "direct", "pagecache"]),
    st.sampled_from(["", "direct", "pagecache"]),
    st.text(max_size=16),
)


@st.composite
def layer_ops(draw: st.DrawFn) -> pb.Op:
    """Layer-object ops (issue 12): reserve, append (with or without expect_size), read_range."""
    kind = draw(st.integers(min_value=0, max_value=7))
    key = draw(LAYER_KEY_DRAW)
    if kind < 2:
        return pb.Op(
            reserve=pb.ReserveOp(
                key=key,
                capacity=draw(ROOMS),
                persistent=draw(st.booleans()),
                path=draw(PATH_NAMES),
            )
        )
    if kind < 5:
        op = pb.AppendOp(
            key=key, arena_offset=draw(OFFSETS), length=draw(LENGTHS), durable=draw(st.booleans())
        )
        if draw(st.booleans()):
            op.expect_size = draw(_mostly(st.integers(0, 64 << 10), U64))
        return pb.Op(append=op)
    return pb.Op(
        read_range=pb.ReadRangeOp(
            key=key,
            offset=draw(_mostly(st.just(0), st.integers(0, 64 << 10), U64)),
            length=draw(_mostly(st.just(0), st.integers(0, 64 << 10), U64)),  # 0: to the end
            arena_offset=draw(OFFSETS),
        )
    )


#: A stat's pin: none, a short one, or hostile (above limits.max_pin_ms, up to the uint32 max).
PIN_MS = _mostly(
    st.sampled_from([0, 0, 1, 50, 5000]),
    st.integers(min_value=0, max_value=2**32 - 1),
)


@st.composite
def lookup_ops(draw: st.DrawFn) -> pb.Op:
    """Issue 13's ops: stat (with or without a hit pin), unpin and touch."""
    kind = draw(st.integers(min_value=0, max_value=4))
    if kind < 3:
        return pb.Op(stat=pb.StatOp(key=draw(KEYS), pin_ms=draw(PIN_MS)))
    if kind == 3:
        return pb.Op(unpin=pb.UnpinOp(key=draw(KEYS)))
    return pb.Op(touch=pb.TouchOp(key=draw(KEYS)))


@st.composite
def batch_ops(draw: st.DrawFn) -> pb.Op:
    """One Batch op: a lookup op one time in ten, else a data op (:func:`ops`)."""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return draw(lookup_ops())
    return draw(ops())


#: ``own`` uses the caller's token; the others must all be refused with UNAUTHENTICATED.
TOKENS = st.sampled_from(["own"] * 15 + ["none", "stale", "garbage", "no-bearer", "empty"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, Any]:
    """``(tenant, token kind, request)``; the request is a Batch, Stat or List message."""
    tenant = draw(st.sampled_from(sorted(MARKERS)))
    token = draw(TOKENS)
    rpc = draw(st.sampled_from(["Batch"] * 6 + ["Stat", "List"]))
    if rpc == "Batch":
        msg: Any = pb.BatchRequest(
            ops=draw(st.lists(batch_ops(), min_size=0, max_size=8)),
            stop_on_error=draw(st.integers(min_value=0, max_value=3)) == 3,
        )
    elif rpc == "Stat":
        msg = pb.StatRequest(key=draw(KEYS))
    else:
        msg = pb.ListRequest(
            prefix=draw(st.one_of(st.just(b""), KEYS)),
            limit=draw(st.integers(min_value=0, max_value=2**32 - 1)),
        )
    return tenant, token, msg


@dataclass
class FuzzCounts:
    """What a run did: the numbers docs/reliability.md records."""

    cases: int = 0
    rpcs: int = 0
    ops: int = 0
    #: Successful gets whose bytes were checked against the caller's marker.
    gets_checked: int = 0
    #: Bytes of a get that did not belong to the caller (must stay 0).
    cross_tenant_leaks: int = 0
    #: Human descriptions of every violated criterion (must stay empty).
    failures: list[str] = field(default_factory=list)
    rpc_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    op_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Op kinds ("put", "reserve", ...) that came back OK: the run reached the store with each.
    ok_kinds: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "rpcs": self.rpcs,
            "ops": self.ops,
            "gets_checked": self.gets_checked,
            "cross_tenant_leaks": self.cross_tenant_leaks,
            "failures": list(self.failures),
            "rpc_codes": dict(sorted(self.rpc_codes.items())),
            "op_codes": dict(sorted(self.op_codes.items())),
            "ok_kinds": dict(sorted(self.ok_kinds.items())),
        }


class FuzzHarness:
    """One session per tenant on a live daemon, plus a stale token; runs fuzzed requests."""

    def __init__(self, socket: str | Path) -> None:
        self.socket = str(socket)
        self.counts = FuzzCounts()
        self._lock = threading.Lock()
        self.clients = {
            t: Client.connect(self.socket, tenant=t, arena_bytes=ARENA_BYTES) for t in MARKERS
        }
        self._arenas = {t: c.arena.view(Slot(0, ARENA_BYTES)) for t, c in self.clients.items()}
        with Client.connect(self.socket, tenant="alpha", arena_bytes=4096) as gone:
            self._stale = gone._hs.token

    def close(self) -> None:
        for view in self._arenas.values():
            view.release()
        for c in self.clients.values():
            c.close()

    def __enter__(self) -> FuzzHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self, tenant: str, kind: str) -> tuple[tuple[str, str], ...]:
        token = self.clients[tenant]._hs.token
        return {
            "own": (("authorization", f"Bearer {token}"),),
            "none": (),
            "stale": (("authorization", f"Bearer {self._stale}"),),
            "garbage": (("authorization", "Bearer " + "Zm9v" * 11),),
            "no-bearer": (("authorization", token),),
            "empty": (("authorization", "Bearer "),),
        }[kind]

    def _fill(self, tenant: str) -> None:
        """Every arena byte becomes the tenant's marker, so everything it stores is marked."""
        view = self._arenas[tenant]
        ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(view)), MARKERS[tenant], len(view))

    def run_case(self, tenant: str, token: str, request: Any) -> None:
        """Send one request and check every pass criterion; violations land in ``counts``."""
        client = self.clients[tenant]
        self._fill(tenant)
        gets: list[tuple[int, pb.GetOp]] = []
        if isinstance(request, pb.BatchRequest):
            method = client._store.Batch
            for i, op in enumerate(request.ops):
                if op.WhichOneof("op") == "get":
                    gets.append((i, op.get))
                elif op.WhichOneof("op") == "read_range":  # checked like a get: room = placed
                    rr = op.read_range
                    gets.append((i, pb.GetOp(arena_offset=rr.arena_offset, length=2**64 - 1)))
        elif isinstance(request, pb.StatRequest):
            method = client._store.Stat
        else:
            method = client._store.List
        name = type(request).__name__
        try:
            reply = method(request, metadata=self._metadata(tenant, token), timeout=DEADLINE_S)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            reply, code = None, err.code()
        with self._lock:
            self.counts.cases += 1
            self.counts.rpcs += 1
            self.counts.rpc_codes[code.name] += 1
            if code in BAD_CODES:
                self.counts.failures.append(f"{name} ({token} token) -> {code.name}")
            if token != "own" and code is not grpc.StatusCode.UNAUTHENTICATED:
                self.counts.failures.append(f"{name} with a {token} token -> {code.name}")
        if reply is not None and isinstance(request, pb.BatchRequest):
            self._check_batch(tenant, request, reply, gets)

    def _check_batch(
        self,
        tenant: str,
        request: pb.BatchRequest,
        reply: pb.BatchResponse,
        gets: Sequence[tuple[int, pb.GetOp]],
    ) -> None:
        failures: list[str] = []
        if len(reply.results) != len(request.ops):
            failures.append(f"batch of {len(request.ops)} ops got {len(reply.results)} results")
        names = [code_name(r.code) for r in reply.results]
        failures += [f"op -> {n}" for n in names if n in {c.name for c in BAD_CODES}]
        leaks = checked = 0
        marker = MARKERS[tenant]
        for i, get in gets:
            if i >= len(reply.results) or reply.results[i].code != 0:
                continue
            size = reply.results[i].size
            if size > get.length or get.arena_offset + size > ARENA_BYTES:
                failures.append(f"get placed {size} bytes into room for {get.length}")
                continue
            data = self._arenas[tenant][get.arena_offset : get.arena_offset + size]
            foreign = size - bytes(data).count(marker)
            checked += 1
            if foreign:
                leaks += foreign
                failures.append(f"get of {size} bytes held {foreign} bytes not written by {tenant}")
        with self._lock:
            self.counts.ops += len(request.ops)
            self.counts.op_codes.update(names)
            self.counts.ok_kinds.update(
                op.WhichOneof("op") for op, r in zip(request.ops, reply.results) if r.code == 0
            )
            self.counts.gets_checked += checked
            self.counts.cross_tenant_leaks += leaks
            self.counts.failures += failures

    def daemon_serves(self) -> bool:
        """A brand-new session can put and get: the daemon survived."""
        with Client.connect(self.socket, tenant="after-fuzz", arena_bytes=1 << 16) as c:
            c.put(b"alive", b"\x5a" * 5000)
            return c.get(b"alive") == b"\x5a" * 5000


def primers() -> list[tuple[str, str, Any]]:
    """One well-formed layer-object round trip per tenant (reserve, append, read_range in one
    Batch, with a packed put and a touch), run before the generated cases: random draws reach a
    *successful* read_range only when an earlier case happened to leave a non-empty layer object
    behind, so without these a run could pass without ever checking the bytes a read_range
    places. They go through the same per-request checks as every generated case."""
    ops = [
        pb.Op(reserve=pb.ReserveOp(key=LAYER_KEYS[0], capacity=64 << 10)),
        pb.Op(append=pb.AppendOp(key=LAYER_KEYS[0], arena_offset=0, length=4096)),
        pb.Op(read_range=pb.ReadRangeOp(key=LAYER_KEYS[0], arena_offset=64 << 10)),
        # and one packed put (issue 14) and a touch of what it stored, so a run shows those
        # ops succeeding too (a random touch succeeds only on a key that happens to exist)
        pb.Op(
            put_packed=pb.PutPackedOp(
                keys=COMMON_KEYS[:2], lengths=[100, 5000], arena_offset=128 << 10
            )
        ),
        pb.Op(touch=pb.TouchOp(key=COMMON_KEYS[0])),
    ]
    return [(tenant, "own", pb.BatchRequest(ops=ops)) for tenant in sorted(MARKERS)]


def run(harness: FuzzHarness, examples: int, *, seed: int | None = None) -> FuzzCounts:
    """Run ``examples`` cases against ``harness`` (the :func:`primers`, then generated ones);
    returns its counts."""
    first = primers()[:examples]
    for case in first:
        harness.run_case(*case)
    if examples <= len(first):
        return harness.counts

    @settings(
        max_examples=examples - len(first),
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=requests())
    def fuzz(case: tuple[str, str, Any]) -> None:
        harness.run_case(*case)

    if seed is not None:
        fuzz = hypothesis_seed(seed)(fuzz)
    fuzz()
    return harness.counts


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dualblade_tools.fuzz", description=__doc__)
    p.add_argument("--examples", type=int, default=5000, help="generated requests (default 5000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized)")
    p.add_argument("--socket", help="fuzz a running daemon instead of starting one")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dbfuzz-", dir="/var/tmp") as tmp:
        daemon = None
        if args.socket is None:
            daemon = DaemonProcess(Path(tmp) / "d").start()
        socket = args.socket or str(daemon.socket)  # type: ignore[union-attr]
        try:
            with FuzzHarness(socket) as harness:
                counts = run(harness, args.examples, seed=args.seed)
                alive = (daemon is None or daemon.proc.poll() is None) and harness.daemon_serves()
        finally:
            if daemon is not None:
                daemon.terminate()
    result = counts.as_dict() | {"daemon_alive": alive, "seconds": time.monotonic() - started}
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for k in ("cases", "rpcs", "ops", "gets_checked", "cross_tenant_leaks", "daemon_alive"):
            print(f"{k:20} {result[k]}")
        print(f"{'seconds':20} {result['seconds']:.1f}")
        print(f"{'rpc codes':20} {result['rpc_codes']}")
        print(f"{'op codes':20} {result['op_codes']}")
        for f in result["failures"][:20]:
            print(f"FAILURE: {f}")
    return 0 if alive and not counts.failures and not counts.cross_tenant_leaks else 1


if __name__ == "__main__":
    sys.exit(main())
