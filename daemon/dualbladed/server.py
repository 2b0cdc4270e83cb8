"""The composition root: builds the daemon from its config and runs it.

Start-up order (each step can fail with a clear message, and everything already acquired is
released in reverse order -- an ``ExitStack`` holds it all):

0. the socket, lock and state directories: created with safe modes, or refused when others
   could tamper with them (:mod:`dualbladed.safedirs`, sshd's StrictModes);
1. instance locks (before any socket is bound: gRPC silently unlinks and re-binds a socket file,
   so without the lock a second daemon would steal the first one's socket);
2. the namespace (safety checks, O_EXCL for block devices) and its superblock;
3. the residency paths (``direct`` on the namespace, ``pagecache`` slab files in
   ``<state_dir>/pagecache``) and the object store over them (metadata, free-map rebuild from
   the committed extent table), with the residency arbiter as its placement callback;
4. the residency arbiter's loop (and its PSI watcher where the kernel has PSI);
5. the session registry (with its admission limits, :mod:`dualbladed.sessions.admission`), the
   shared gRPC server, the per-uid gRPC sockets (:mod:`dualbladed.service.uidsockets`: a
   session's token works only on its own uid's socket), the handshake socket and the admin
   lane (a second handshake socket only root and the admin group can reach). All gRPC
   servers share one thread pool. The handshake socket's leases also carry ``Store.Batch``
   frames (:mod:`dualbladed.service.leaseplane`), run on the same executor as the gRPC
   servicer's;
6. READY=1 to systemd, then the watchdog pings when the unit sets ``WatchdogSec=``; a background
   thread builds the recency and eviction orders the start-up load deferred
   (:meth:`ObjectStore.complete_load`).

Shutdown (SIGTERM/SIGINT): STOPPING=1, stop accepting handshakes, let in-flight RPCs drain
(``server.stop(grace)`` on the shared and the per-uid servers), end every session (ephemeral objects freed), stop the arbiter (an
in-flight migration completes; it must stop before the store it relocates in closes), close the
store (metadata checkpointed), release the locks.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import logging
import os
import select
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc

from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade.v1.wire import GRPC_UNIX_PATH_MAX, admin_handshake_socket_path, reachable_path
from dualbladed import sdnotify
from dualbladed.arbiter.arbiter import ResidencyArbiter
from dualbladed.arbiter.policy import DEFAULT_TICK_S, PolicyConfig, ResidencyPolicy
from dualbladed.arbiter.psi import PsiWatcher
from dualbladed.arbiter.signals import MeteredPath, ReadMeter, SignalReader
from dualbladed.config import IO_ALIGNMENT, DaemonConfig, ResidencyConfig
from dualbladed.lockfile import acquire_instance_locks
from dualbladed.namespace import open_namespace
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.pagecache import PageCachePath, free_floor_bytes
from dualbladed.safedirs import check_dirs
from dualbladed.service.admin_servicer import AdminServicer
from dualbladed.service.inventory import Inventory
from dualbladed.service.leaseplane import LeasePlane
from dualbladed.service.metrics import Metrics
from dualbladed.service.store_servicer import StoreServicer
from dualbladed.service.tokengate import TokenGate
from dualbladed.service.uidsockets import UidSockets, let_group_into_socket, prepare_admin_dir
from dualbladed.sessions.admission import AdmissionLimits
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.batch import BatchExecutor
from dualbladed.sessions.handshake import HandshakeConfig, HandshakeServer
from dualbladed.sessions.registry import Session, SessionRegistry
from dualbladed.sessions.requests import BatchLimits
from dualbladed.sessions.tenancy import is_admin
from dualbladed.store import ObjectStore
from dualbladed.store.capacity import CapacityPolicy
from dualbladed.store.recovery import PAGECACHE_DIR

logger = logging.getLogger(__name__)

#: gRPC message cap: requests are small (ops name arena ranges), but a batch of 1024 ops with
#: 1 KiB keys is ~1 MiB, and List/Extents replies can be large.
MAX_MESSAGE_BYTES = 64 << 20
GRACE_S = 10.0
#: the residency arbiter's period; the per-tick migration bound is one tick of the rate cap.
ARBITER_TICK_S = DEFAULT_TICK_S
#: wake the arbiter early when tasks stall on memory for 150 ms in a 2 s window (recent
#: kernels only accept unprivileged triggers whose window is a multiple of 2 s).
PSI_STALL_US = 150_000
PSI_WINDOW_US = 2_000_000


def pagecache_max_bytes(res: ResidencyConfig, namespace_bytes: int) -> int:
    """``residency.pagecache_max_bytes``, else the namespace's size.

    What an administrator sized for the daemon is what its page-cache slabs may take on the
    state filesystem too -- never "most of the free disk" (issue 15: a quota-less user filled a
    host through the page cache). The free-space floor bounds it further at run time.
    """
    want = namespace_bytes if res.pagecache_max_bytes is None else res.pagecache_max_bytes
    return max(IO_ALIGNMENT, want - want % IO_ALIGNMENT)


def _group_id(name: str | None) -> int | None:
    """The gid of group ``name``; None without a name or where no such group exists."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._stack = contextlib.ExitStack()
        self._stopped = threading.Event()
        self._signal: int | None = None  # the trapped signal that asked us to stop
        self._wakeup: tuple[int, int] | None = None  # the signal wake-up pipe (trap_signals)
        self.store: ObjectStore | None = None
        self.registry: SessionRegistry | None = None
        self.arbiter: ResidencyArbiter | None = None
        self.metrics = Metrics()
        self._server: grpc.Server | None = None
        self._uid_sockets: UidSockets | None = None
        self._watchdog_stop = threading.Event()
        self._namespace_bytes = 0
        # session id -> whether its peer is privileged (root, our uid, admin group): looked up
        # once per session (it reads /proc), dropped when the session ends.
        self._privileged: dict[str, bool] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise

    def _start(self) -> None:
        cfg = self.config
        check_dirs(
            [cfg.state_dir]
            + [os.path.dirname(p) for p in (cfg.socket, cfg.handshake_socket, cfg.lock_path)]
        )
        self._stack.enter_context(acquire_instance_locks(cfg))

        ns_cfg = cfg.namespace
        namespace = open_namespace(ns_cfg.path, size=ns_cfg.size, force=ns_cfg.force)
        self._stack.callback(namespace.close)
        direct = DirectPath(
            namespace, request_bytes=cfg.io.request_bytes, queue_depth=cfg.io.queue_depth
        )
        res = cfg.residency
        state_dir = Path(cfg.state_dir)
        self._namespace_bytes = namespace.capacity
        pagecache = PageCachePath(
            state_dir / PAGECACHE_DIR,
            slab_bytes=res.slab_bytes,
            max_bytes=pagecache_max_bytes(res, namespace.capacity),
            alignment=IO_ALIGNMENT,
            writeback_bytes=res.pagecache_writeback_bytes,
            free_floor=free_floor_bytes(
                state_dir, res.pagecache_min_free_bytes, res.pagecache_min_free_fraction
            ),
        )
        self._stack.callback(pagecache.close)  # idempotent; the store closes it normally
        # the daemon times its own reads per path: the arbiter's split comes from these speeds
        meter = ReadMeter()
        store = ObjectStore.open(
            namespace,
            state_dir,
            paths={
                DIRECT: MeteredPath(direct, DIRECT, meter),  # type: ignore[dict-item]
                PAGECACHE: MeteredPath(pagecache, PAGECACHE, meter),  # type: ignore[dict-item]
            },
            format=ns_cfg.format,
            placement=self._place,
            placement_many=self._place_many,
            capacity=CapacityPolicy(
                evict_persistent=cfg.limits.evict_persistent,
                max_pins_per_session=cfg.limits.max_pins_per_session,
                max_pin_ms=cfg.limits.max_pin_ms,
            ),
        )
        self._stack.callback(store.close)
        self.store = store
        punched = pagecache.punch_free()  # space freed before a crash goes back to the disk
        logger.info(
            "page-cache path: cap %d bytes, free-space floor %d bytes, %d free bytes punched",
            pagecache.max_bytes,
            pagecache.free_floor,
            punched,
        )

        signals = SignalReader()
        psi_path = signals.psi_path
        arbiter = ResidencyArbiter(
            store,
            ResidencyPolicy(PolicyConfig.from_residency(res, ARBITER_TICK_S)),
            signals,
            pagecache,
            tick_s=ARBITER_TICK_S,
            migration_bytes_per_s=res.migration_bytes_per_s,
            psi_watcher=None
            if psi_path is None
            else functools.partial(PsiWatcher, psi_path, PSI_STALL_US, PSI_WINDOW_US),
            meter=meter,
        )
        arbiter.start()
        self.arbiter = arbiter
        self._stack.callback(arbiter.stop)  # runs before store.close (LIFO)

        admission = AdmissionLimits.resolve(cfg.admission, cfg.limits.max_sessions)
        registry = SessionRegistry(cfg.limits.max_sessions, admission)
        logger.info("session admission: %s", admission)
        registry.on_end(self._session_ended)
        self.registry = registry
        # what each tenant's processes mapped and have yet to read: out of its burst's share of
        # free memory, and out of the room the fill grows into (arbiter/mapped.py)
        arbiter.mapped.session_pids = lambda: [(s.tenant, s.pid) for s in registry.sessions()]
        limits = BatchLimits(cfg.limits.max_batch_ops, cfg.limits.max_object_bytes)
        executor = BatchExecutor(
            store,
            limits,
            self._quota_for,
            self.metrics.record,
            parallelism=cfg.io.queue_depth,
            uid_quota_for=self._uid_quota_for,
            record_many=self.metrics.record_many,
            session_live=lambda s: registry.get(s.id) is s,
            bulk_nice=cfg.io.bulk_write_nice,
            bulk_min_bytes=cfg.io.bulk_write_bytes,
        )
        self._stack.callback(executor.close)
        inventory = Inventory(
            namespace=namespace,
            namespace_uuid=str(store.namespace_uuid),
            state_dir=str(cfg.state_dir),
            store=store,
            registry=registry,
            metrics=self.metrics,
            quota_for_tenant=cfg.quotas.quota_for,
            residency=arbiter.snapshot,
        )
        self._register_gauges(store, registry, arbiter, pagecache)

        pool = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="rpc")
        self._stack.callback(pool.shutdown, wait=False)
        store_servicer = StoreServicer(registry, store, executor, limits, self._quota_for)
        admin_servicer = AdminServicer(registry, inventory, cfg.admin_group)

        def make_server(uid: int | None) -> grpc.Server:
            """A gRPC server on the shared pool; ``uid`` None: the shared socket's."""
            server = grpc.server(
                pool,
                interceptors=[TokenGate(registry, uid)],
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            pb_grpc.add_StoreServicer_to_server(store_servicer, server)
            pb_grpc.add_AdminServicer_to_server(admin_servicer, server)
            return server

        server = make_server(None)
        old_umask = os.umask(0o117)  # socket mode 0660: owner and group may connect
        bind_path, bound_via = reachable_path(cfg.socket, GRPC_UNIX_PATH_MAX)
        if bound_via is not None:  # a long path, bound through the directory's fd: keep it open
            self._stack.callback(os.close, bound_via)
        try:
            if not server.add_insecure_port(f"unix://{bind_path}"):
                raise OSError(f"could not bind the gRPC socket {cfg.socket}")
        finally:
            os.umask(old_umask)
        server.start()
        self._server = server
        self._stack.callback(server.stop, 0)

        uid_sockets = UidSockets(Path(cfg.socket).parent, make_server)
        uid_sockets.start()
        self._uid_sockets = uid_sockets
        self._stack.callback(uid_sockets.stop, 0)

        def privileged(uid: int, gid: int, pid: int) -> bool:
            """Exempt from per-uid limits, may use the reserves and the admin lane: root, the
            admin group, and the daemon's own uid (which owns its files anyway)."""
            return uid == os.geteuid() or is_admin(uid, gid, pid, cfg.admin_group)

        handshake = HandshakeServer(
            cfg.handshake_socket,
            registry,
            HandshakeConfig(cfg.limits),
            make_arena=Arena.create,
            on_request=LeasePlane(registry, executor),
            is_privileged=privileged,
            grpc_sockets=uid_sockets,
        )
        handshake.start()
        self._stack.callback(handshake.stop)
        self._handshake = handshake
        # The admin lane: root's and dbctl's handshakes never queue behind another user's flood.
        admin_gid = _group_id(cfg.admin_group)
        admin_path = admin_handshake_socket_path(cfg.socket)
        group_in = prepare_admin_dir(os.path.dirname(admin_path), admin_gid)
        admin_lane = HandshakeServer(
            admin_path,
            registry,
            HandshakeConfig(
                cfg.limits,
                socket_mode=0o600,
                request_workers=4,
                open_workers=2,
                max_accepts_per_s=None,
            ),
            make_arena=Arena.create,
            on_request=LeasePlane(registry, executor),
            is_privileged=privileged,
            grpc_sockets=uid_sockets,
            privileged_only=True,
        )
        admin_lane.start()
        self._stack.callback(admin_lane.stop)
        if group_in and admin_gid is not None:
            group_in = let_group_into_socket(admin_path, admin_gid)
        if admin_gid is not None and not group_in:
            logger.warning(
                "the admin group cannot use the admin lane %s (no POSIX ACLs there); its "
                "members hand-shake on the shared socket",
                admin_path,
            )

        if cfg.metrics.prometheus_address:
            self.metrics.start_prometheus(cfg.metrics.prometheus_address)
        logger.info(
            "dualbladed serving",
            extra={"socket": str(cfg.socket), "namespace": namespace.path, "kind": namespace.kind},
        )
        sdnotify.ready(f"serving on {cfg.socket}")
        self._start_watchdog()
        # the start-up load deferred its recency/eviction orders (ObjectIndex.load_groups):
        # build them now, off the path to READY=1 (a first eviction or plan would build them)
        threading.Thread(
            target=store.complete_load, name="dualblade-load-orders", daemon=True
        ).start()

    def _place(self, tenant: str, size: int) -> str:
        """The store's placement callback; the arbiter exists once the store is open."""
        arbiter = self.arbiter
        return arbiter.place(tenant, size) if arbiter is not None else DIRECT

    def _place_many(self, tenant: str, sizes: Sequence[int]) -> list[str]:
        """The store's placement callback for a packed put's objects (one call for all)."""
        arbiter = self.arbiter
        return arbiter.place_many(tenant, sizes) if arbiter is not None else [DIRECT] * len(sizes)

    def _register_gauges(
        self,
        store: ObjectStore,
        registry: SessionRegistry,
        arbiter: ResidencyArbiter,
        pagecache: PageCachePath,
    ) -> None:
        m = self.metrics
        m.register_gauge("sessions", "open client sessions", lambda: len(registry.sessions()))
        m.register_gauge(
            "free_bytes", "free bytes on the namespace", lambda: store.paths[DIRECT].stats().free
        )
        m.register_gauge(
            "residency_budget_bytes",
            "page-cache budget held by the residency arbiter",
            lambda: arbiter.budget.total if arbiter.budget is not None else 0,
        )
        m.register_gauge(
            "residency_pagecache_resident_bytes",
            "bytes of the page-cache path in RAM (mincore)",
            pagecache.resident_bytes,
        )
        m.register_counter(
            "evictions",
            "persistent objects evicted (LRU) to make room for puts",
            ("tenant", "path"),
            lambda: {k: v.count for k, v in store.evictions.snapshot().items()},
        )
        m.register_counter(
            "evicted_bytes",
            "payload bytes of the evicted objects",
            ("tenant", "path"),
            lambda: {k: v.bytes for k, v in store.evictions.snapshot().items()},
        )
        m.register_gauge(
            "pinned_objects",
            "keys hit-pinned by sessions now",
            lambda: sum(store.pin_counts().values()),
        )
        m.register_gauge(
            "residency_migrated_bytes",
            "bytes moved between residency paths since start",
            lambda: sum(v for k, v in arbiter.totals().items() if k.endswith("_bytes")),
        )

    def _start_watchdog(self) -> None:
        """Ping WATCHDOG=1 every half interval (on its own thread) when the unit asks."""
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        period = interval / 2

        def loop() -> None:
            sdnotify.watchdog()
            while not self._watchdog_stop.wait(period):
                sdnotify.watchdog()

        self._watchdog_stop.clear()
        thread = threading.Thread(target=loop, name="sd-watchdog", daemon=True)
        thread.start()
        self._stack.callback(thread.join)
        self._stack.callback(self._watchdog_stop.set)
        logger.info("systemd watchdog: pinging every %.2f s", period)

    def _quota_for(self, session: Session) -> int:
        return self.config.quotas.quota_for(session.uid, session.tenant_label)

    def _uid_quota_for(self, session: Session) -> int:
        """The per-uid cap (``quotas.per_uid`` / ``uid_default_*``); 0 = unlimited."""
        privileged = self._privileged.get(session.id)
        if privileged is None:
            privileged = session.uid in (0, os.geteuid()) or is_admin(
                session.uid, session.gid, session.pid, self.config.admin_group
            )
            self._privileged[session.id] = privileged
        return self.config.quotas.uid_quota(
            session.uid, privileged=privileged, namespace_bytes=self._namespace_bytes
        )

    def _session_ended(self, session: Session) -> None:
        self._privileged.pop(session.id, None)
        if self.store is not None:
            freed = self.store.release_session(session.id)
            logger.info("session ended", extra={"session": session.id, "freed_objects": freed})

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        sdnotify.stopping()
        logger.info("dualbladed stopping: draining in-flight calls")
        if self._server is not None:
            self._server.stop(GRACE_S).wait(GRACE_S)
        if self._uid_sockets is not None:
            self._uid_sockets.stop(GRACE_S)
        self._stack.close()
        logger.info("dualbladed stopped cleanly")

    def trap_signals(self) -> None:
        """Make SIGTERM/SIGINT request a clean stop. Call on the main thread, before
        :meth:`start`: READY=1 goes out inside it, and a SIGTERM that follows at once must
        drain, not kill the process.

        The handler only stores the signal number. It runs on the main thread between two
        bytecodes, possibly inside a critical section of a non-reentrant lock the main thread
        holds: it used to call ``Event.set`` while the main loop sat in ``Event.wait``, whose
        condition lock is such a lock, and a SIGTERM 1 ms after READY=1 hung the daemon for
        good (its log: "signal SIGTERM received", nothing after). The interpreter's C-level
        handler writes the signal to a wake-up pipe (``signal.set_wakeup_fd``), which makes
        :meth:`serve_forever`'s ``select`` return at once; the main loop logs and stops."""
        if self._wakeup is None:
            self._wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(self._wakeup[1], warn_on_full_buffer=False)

        def on_signal(signum: int, _frame: object) -> None:
            self._signal = signum  # nothing else: see the docstring

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def serve_forever(self) -> None:
        """Serve until a trapped signal arrives (traps them now if :meth:`trap_signals` was not
        called), then stop."""
        if self._wakeup is None:
            self.trap_signals()
        assert self._wakeup is not None
        wake = self._wakeup[0]
        try:
            # The timeout is a second line of defence: the wake-up pipe ends the wait at once.
            while self._signal is None:
                select.select([wake], [], [], 1.0)
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake, 512):
                        pass
            logger.info("signal %s received", signal.Signals(self._signal).name)
        finally:
            self.stop()
            # Unhook the pipe before closing it (we are on the main thread, as set_wakeup_fd
            # wants): a signal must never write into a reused descriptor number. A wake-up fd
            # someone set after ours stays theirs.
            current = signal.set_wakeup_fd(-1)
            if current != self._wakeup[1]:
                signal.set_wakeup_fd(current)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
