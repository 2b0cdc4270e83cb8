"""The settings: one frozen dataclass per ``[table]`` of the TOML file, and their defaults.

Components receive the frozen sections (:class:`LimitsConfig`, :class:`ResidencyConfig`, ...)
rather than loose keyword arguments. A section checks itself in its ``__post_init__``; checks
across sections are the loader's (:mod:`dualbladed.config.load`). TOML has no null: leave a key
out to get its default; ``admin_group = ""`` means no admin group.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from dualblade.v1.wire import ALIGNMENT
from dualbladed.config.parsers import (
    GiB,
    MiB,
    boolean,
    byte_size,
    enum_member,
    fraction,
    group_name,
    integer,
    listen_address,
    one_of,
    optional,
    quota_map,
    text,
    uid_quota_map,
    weight_map,
)
from dualbladed.config.table import derived, section, setting
from dualbladed.errors import InvalidArgument

DEFAULT_NAMESPACE_BYTES = 4 * GiB
NAMESPACE_FILE_NAME = "namespace.img"
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# O_DIRECT requests and slabs must be whole logical blocks; 4 KiB covers 512e and 4Kn devices.
# Arena slices are O_DIRECT buffers, so this is the arena alignment of the wire contract.
IO_ALIGNMENT = ALIGNMENT


class ResidencyMode(str, enum.Enum):
    """``residency.mode``: who picks an object's path. The forced modes are named after the path
    they force (``dualbladed.paths.abstract.PAGECACHE`` / ``DIRECT``)."""

    #: the residency arbiter places and migrates by live memory availability
    ADAPTIVE = "adaptive"
    #: every object on the page-cache path
    PAGECACHE = "pagecache"
    #: every object on the NVMe-direct path
    DIRECT = "direct"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, raw: object) -> ResidencyMode:
        """The mode from its name (or itself); InvalidArgument names the choices."""
        return _residency_mode("residency.mode", raw)  # type: ignore[no-any-return]

    @property
    def forced_path(self) -> str | None:
        """The path this mode pins every object to; None for adaptive."""
        return None if self is ResidencyMode.ADAPTIVE else self.value


_SIZE = byte_size(IO_ALIGNMENT, IO_ALIGNMENT)  # a positive multiple of the I/O alignment


@dataclass(frozen=True)
class NamespaceConfig:
    """The one namespace the daemon owns: a block device or a file (created if absent)."""

    path: str = derived(
        text,
        f"namespace: block device or file; default <state_dir>/{NAMESPACE_FILE_NAME}",
        "--namespace",
        is_path=True,
    )
    # Bytes for a file namespace that must be created or grown; None for block devices.
    size: int | None = setting(
        None, optional(_SIZE), "size of a file namespace, e.g. 4GiB", "--namespace-size"
    )
    # Take a device even if it looks in use (mounted, foreign signature...).
    force: bool = setting(False, boolean, "take a device that looks in use", "--force")
    # Write a fresh superblock, destroying what the namespace held.
    format: bool = setting(False, boolean, "format the namespace (destroys data)", "--format")


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: what one session may ask for; the handshake announces them to clients."""

    max_batch_ops: int = setting(1024, integer(1), "operations per Batch call")
    max_object_bytes: int = setting(256 * MiB, byte_size(1), "largest object")
    max_arena_bytes: int = setting(4 * GiB, _SIZE, "largest arena")
    default_arena_bytes: int = setting(256 * MiB, _SIZE, "arena size when the client asks for none")
    max_sessions: int = setting(256, integer(1), "concurrent sessions")
    # Capacity (issue 13): evict persistent objects LRU when a path or a tenant quota is full.
    evict_persistent: bool = setting(True, boolean, "evict persistent objects LRU when full")
    max_pins_per_session: int = setting(
        16384, integer(0, (1 << 32) - 1), "live stat hit pins per session"
    )
    max_pin_ms: int = setting(
        600_000, integer(1, (1 << 32) - 1), "longest hit pin a stat may ask for (ms)"
    )

    def __post_init__(self) -> None:
        if self.default_arena_bytes > self.max_arena_bytes:
            raise InvalidArgument(
                f"limits.default_arena_bytes: {self.default_arena_bytes} exceeds "
                f"limits.max_arena_bytes {self.max_arena_bytes}"
            )


@dataclass(frozen=True)
class AdmissionConfig:
    """``[admission]``: what one uid may hold, and what is kept back for root and the admin group.

    Checked at the handshake *before* anything is allocated (``dualbladed.sessions.admission``).
    Root and members of ``admin_group`` are exempt from the per-uid limits and may use the
    reserves; everyone else together stops short of them, so one uid filling the table cannot
    lock out root or dbctl. None (the default) sizes a limit from the machine when the daemon
    starts; the rules are in :meth:`dualbladed.sessions.admission.AdmissionLimits.resolve`.
    """

    per_uid_sessions: int | None = setting(
        None, optional(integer(1)), "sessions one non-admin uid may hold; default max_sessions/4"
    )
    reserved_sessions: int | None = setting(
        None, optional(integer(0)), "sessions only root/admins may take; default max_sessions/16"
    )
    arena_bytes: int | None = setting(
        None, optional(_SIZE), "arena bytes of all sessions together; default RAM/2"
    )
    per_uid_arena_bytes: int | None = setting(
        None, optional(_SIZE), "arena bytes one non-admin uid may hold; default RAM/4"
    )
    reserved_arena_bytes: int | None = setting(
        None,
        optional(byte_size(0, IO_ALIGNMENT)),
        "arena bytes only root/admins may take; default arena_bytes/8",
    )


@dataclass(frozen=True)
class QuotaConfig:
    """Capacity quotas in bytes; 0 means unlimited."""

    default_bytes: int = setting(0, byte_size(), "per-tenant quota, 0 = unlimited")
    # Keys are a tenant label ("llama") or "uid/label" ("1000/llama"); the latter wins.
    per_tenant: Mapping[str, int] = setting(
        MappingProxyType({}), quota_map, "label|uid/label = size"
    )
    # Per-uid caps over all of a uid's labels (see ``uid_quota``): hostile-user protection.
    uid_default_bytes: int | None = setting(
        None, optional(byte_size()), "per-uid cap of non-admin uids; default a namespace fraction"
    )
    uid_default_fraction: float = setting(
        0.25, fraction, "per-uid cap of non-admin uids, as a fraction of the namespace"
    )
    per_uid: Mapping[int, int] = setting(
        MappingProxyType({}), uid_quota_map, "uid = size (0 = unlimited), for anyone"
    )

    def quota_for(self, uid: int, label: str) -> int:
        """The quota of tenant ``label`` run by ``uid``: exact uid/label, then label, then default."""
        exact = self.per_tenant.get(f"{uid}/{label}")
        if exact is not None:
            return exact
        return self.per_tenant.get(label, self.default_bytes)

    def uid_quota(self, uid: int, *, privileged: bool, namespace_bytes: int) -> int:
        """Bytes ``uid`` may hold over all its labels together; 0 means unlimited.

        An explicit ``per_uid`` entry wins for anyone. Otherwise root, the daemon's own uid and
        the admin group (``privileged``) are unlimited, and everyone else gets
        ``uid_default_bytes``, else ``uid_default_fraction`` of the namespace. Per uid, not per
        tenant, because labels are the client's choice: a per-label quota alone is no bound.
        """
        explicit = self.per_uid.get(uid)
        if explicit is not None:
            return explicit
        if privileged:
            return 0
        if self.uid_default_bytes is not None:
            return self.uid_default_bytes
        return max(1, int(namespace_bytes * self.uid_default_fraction))


@dataclass(frozen=True)
class IOConfig:
    # 2 MiB: a KV chunk (vLLM's 2 MiB chunks, a layer's block run) is then one preadv/pwritev.
    # A batch's gets each do their I/O inline on a batch thread (paths.engine.serial_transfers),
    # so 1 MiB meant two serial syscalls per 2 MiB get: measured -10% daemon CPU per GB at 2 MiB
    # and no loss of speed (the kernel still splits a large O_DIRECT request in flight).
    request_bytes: int = setting(2 * MiB, _SIZE, "I/O request size")
    # 8, also the batch executor's parallelism: 16 measured no faster and more CPU per GB of
    # 2 MiB gets on the 2-vCPU box (more threads contending for the GIL).
    queue_depth: int = setting(8, integer(1, 1024), "I/O requests in flight")
    # Batches that only write, and carry at least bulk_write_bytes, run on threads this much
    # nicer than the daemon: a prefill's write-back then takes the CPU its model's thread leaves
    # (residency bench, ratio 0.5: adaptive / baseline prefill 1.28-1.47 before, 1.06-1.20 after,
    # alternating runs); reads and small writes keep the daemon's priority
    # (dualbladed.sessions.bulk). 0 turns it off.
    bulk_write_nice: int = setting(10, integer(0, 19), "nice of bulk-write threads (0 = off)")
    # 8 MiB, not 1: a single put waits for its hand-off to the bulk pool and for a niced thread.
    # dualblade-bench daemon, lease / in-process put at depth 1, three alternating pairs with
    # the pool on (1 MiB threshold) and off: 1 MiB 0.42, 0.35, 0.60 against 0.54, 0.48, 0.62;
    # 4 MiB 0.67, 0.55, 0.76 against 0.69, 0.71, 0.98. A prefill's layer batch (a layer's K and
    # V, 32 MiB in the residency bench) is still bulk.
    bulk_write_bytes: int = setting(8 * MiB, _SIZE, "a write batch this large is bulk")


_residency_mode = enum_member(ResidencyMode)


@dataclass(frozen=True)
class ResidencyConfig:
    mode: ResidencyMode = setting(ResidencyMode.ADAPTIVE, _residency_mode, "residency policy")
    # Optional floor: memory the arbiter always leaves alone. 0: the budget is learned from
    # refaults, PSI, the page-cache hit ratio and measured read speeds (arbiter/feedback.py).
    reserve_bytes: int = setting(0, byte_size(), "optional floor left to others")
    # The budget moves only when memory changes by more than this, to avoid demote/promote flaps.
    hysteresis_bytes: int = setting(256 * MiB, byte_size(), "budget change dead band")
    # Share of the page-cache budget per tenant label (missing labels weigh 1.0).
    weights: Mapping[str, float] = setting(MappingProxyType({}), weight_map, "label = weight")
    migration_bytes_per_s: int = setting(512 * MiB, byte_size(1), "migration rate cap")
    # Cap on the page-cache slabs' size on disk; None: the namespace's size (never "free disk").
    pagecache_max_bytes: int | None = setting(
        None, optional(byte_size()), "page-cache cap; default the namespace size"
    )
    # Free-space floor on the state directory's filesystem: the smaller of the two (0 = off).
    # Below it page-cache puts and promotions stop (puts are placed on direct instead).
    pagecache_min_free_bytes: int = setting(2 * GiB, byte_size(), "disk floor for the page cache")
    pagecache_min_free_fraction: float = setting(
        0.10, fraction, "disk floor for the page cache, as a fraction of the filesystem"
    )
    slab_bytes: int = setting(64 * MiB, _SIZE, "slab size")
    # Page-cache writes of at least this size start their write-back at once
    # (sync_file_range WRITE, no wait; not a durability step): under a cgroup v1 limit dirty KV
    # otherwise piles up (1 GiB of a prefill, measured) until reclaim can only evict others'
    # clean pages. Off by default: it kept dirty pages under 32 MiB but changed no measured
    # decode or prefill time on its own, and costs ~0.7 s of daemon CPU per GiB written plus
    # disk writes for KV that may die before the kernel's own 30 s write-back (docs/residency.md,
    # "Follow-up 3"). "1MiB" turns it on for writes of 1 MiB and more.
    pagecache_writeback_bytes: int = setting(
        0, byte_size(), "early write-back for page-cache writes this large (0 = off)"
    )

    def __post_init__(self) -> None:
        # A mode given as its string (a test, a tool) becomes the enum, so ``is`` compares work.
        object.__setattr__(self, "mode", ResidencyMode.parse(self.mode))


@dataclass(frozen=True)
class MetricsConfig:
    # "host:port" for the Prometheus endpoint; None disables it. Loopback only, or "0.0.0.0".
    prometheus_address: str | None = setting(None, optional(listen_address), "Prometheus host:port")


@dataclass(frozen=True)
class DaemonConfig:
    namespace: NamespaceConfig = section(NamespaceConfig, required=True)
    state_dir: str = derived(text, "metadata and page-cache files", "--state-dir", is_path=True)
    socket: str = derived(text, "gRPC Unix socket path", "--socket", is_path=True)
    handshake_socket: str = derived(text, "handshake socket path", is_path=True)
    lock_path: str = derived(text, "instance lock file", is_path=True)
    log_format: str = setting("json", one_of(*LOG_FORMATS), "json | console", "--log-format")
    log_level: str = setting(
        "INFO", one_of(*LOG_LEVELS, upper=True), "DEBUG | INFO | WARNING | ERROR", "--log-level"
    )
    # Group whose members get the admin role (and group ownership of the sockets); None: none.
    admin_group: str | None = setting(
        "dualblade-admin", group_name, "admin role group ('' for none)"
    )
    limits: LimitsConfig = section(LimitsConfig)
    admission: AdmissionConfig = section(AdmissionConfig)
    quotas: QuotaConfig = section(QuotaConfig)
    io: IOConfig = section(IOConfig)
    residency: ResidencyConfig = section(ResidencyConfig)
    metrics: MetricsConfig = section(MetricsConfig)
