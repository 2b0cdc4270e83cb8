"""The composition root: builds the daemon from its config and runs it.

Start-up order (each step can fail with a clear message, and everything already acquired is
released in reverse order -- an ``ExitStack`` holds it all):

1. instance locks (before any socket is bound: gRPC silently unlinks and re-binds a socket file,
   so without the lock a second daemon would steal the first one's socket);
2. the namespace (safety checks, O_EXCL for block devices) and its superblock;
3. the object store (metadata, free-map rebuild from the committed extent table);
4. the session registry and the handshake socket, then the gRPC server;
5. READY=1 to systemd.

Shutdown (SIGTERM/SIGINT): STOPPING=1, stop accepting handshakes, let in-flight RPCs drain
(``server.stop(grace)``), end every session (ephemeral objects freed), close the store (metadata
checkpointed), release the locks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualbladed import sdnotify
from dualbladed.config import DaemonConfig
from dualbladed.lockfile import acquire_instance_locks
from dualbladed.namespace import open_namespace
from dualbladed.objects import ObjectStore
from dualbladed.paths.direct import DirectPath
from dualbladed.service.admin_servicer import AdminServicer
from dualbladed.service.inventory import Inventory
from dualbladed.service.metrics import Metrics
from dualbladed.service.store_servicer import StoreServicer
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.batch import BatchExecutor, BatchLimits
from dualbladed.sessions.handshake import HandshakeServer
from dualbladed.sessions.registry import Session, SessionRegistry

logger = logging.getLogger(__name__)

#: gRPC message cap: requests are small (ops name arena ranges), but a batch of 1024 ops with
#: 1 KiB keys is ~1 MiB, and List/Extents replies can be large.
MAX_MESSAGE_BYTES = 64 << 20
GRACE_S = 10.0


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._stack = contextlib.ExitStack()
        self._stopped = threading.Event()
        self.store: ObjectStore | None = None
        self.registry: SessionRegistry | None = None
        self.metrics = Metrics()
        self._server: grpc.Server | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise

    def _start(self) -> None:
        cfg = self.config
        for d in (Path(cfg.state_dir), Path(cfg.socket).parent):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._stack.enter_context(acquire_instance_locks(cfg))

        ns_cfg = cfg.namespace
        namespace = open_namespace(ns_cfg.path, size=ns_cfg.size, force=ns_cfg.force)
        self._stack.callback(namespace.close)
        direct = DirectPath(
            namespace, request_bytes=cfg.io.request_bytes, queue_depth=cfg.io.queue_depth
        )
        store = ObjectStore.open(
            namespace, Path(cfg.state_dir), paths={"direct": direct}, format=ns_cfg.format
        )
        self._stack.callback(store.close)
        self.store = store

        registry = SessionRegistry(cfg.limits.max_sessions)
        registry.on_end(self._session_ended)
        self.registry = registry
        limits = BatchLimits(cfg.limits.max_batch_ops, cfg.limits.max_object_bytes)
        executor = BatchExecutor(store, limits, self._quota_for, self.metrics.record)
        inventory = Inventory(
            namespace=namespace,
            namespace_uuid=str(store.namespace_uuid),
            state_dir=str(cfg.state_dir),
            store=store,
            registry=registry,
            metrics=self.metrics,
            quota_for_tenant=cfg.quotas.quota_for,
        )

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        pb_grpc.add_StoreServicer_to_server(
            StoreServicer(registry, store, executor, limits, self._quota_for), server
        )
        pb_grpc.add_AdminServicer_to_server(
            AdminServicer(registry, inventory, cfg.admin_group), server
        )
        old_umask = os.umask(0o117)  # socket mode 0660: owner and group may connect
        try:
            if not server.add_insecure_port(f"unix://{cfg.socket}"):
                raise OSError(f"could not bind the gRPC socket {cfg.socket}")
        finally:
            os.umask(old_umask)
        server.start()
        self._server = server
        self._stack.callback(server.stop, 0)

        handshake = HandshakeServer(
            cfg.handshake_socket,
            registry,
            make_arena=Arena.create,
            default_arena_bytes=cfg.limits.default_arena_bytes,
            max_arena_bytes=cfg.limits.max_arena_bytes,
        )
        handshake.start()
        self._stack.callback(handshake.stop)
        self._handshake = handshake

        if cfg.metrics.prometheus_address:
            self.metrics.start_prometheus(cfg.metrics.prometheus_address)
        logger.info(
            "dualbladed serving",
            extra={"socket": str(cfg.socket), "namespace": namespace.path, "kind": namespace.kind},
        )
        sdnotify.ready(f"serving on {cfg.socket}")

    def _quota_for(self, session: Session) -> int:
        return self.config.quotas.quota_for(session.uid, session.tenant_label)

    def _session_ended(self, session: Session) -> None:
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
        self._stack.close()
        logger.info("dualbladed stopped cleanly")

    def serve_forever(self) -> None:
        done = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            logger.info("signal %s received", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            done.wait()
        finally:
            self.stop()
