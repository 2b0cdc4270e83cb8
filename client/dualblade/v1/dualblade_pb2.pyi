from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResidencyPath(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESIDENCY_PATH_UNSPECIFIED: _ClassVar[ResidencyPath]
    RESIDENCY_PATH_DIRECT: _ClassVar[ResidencyPath]
    RESIDENCY_PATH_PAGECACHE: _ClassVar[ResidencyPath]
RESIDENCY_PATH_UNSPECIFIED: ResidencyPath
RESIDENCY_PATH_DIRECT: ResidencyPath
RESIDENCY_PATH_PAGECACHE: ResidencyPath

class PutOp(_message.Message):
    __slots__ = ("key", "arena_offset", "length", "persistent", "durable", "path")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ARENA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    arena_offset: int
    length: int
    persistent: bool
    durable: bool
    path: ResidencyPath
    def __init__(self, key: _Optional[bytes] = ..., arena_offset: _Optional[int] = ..., length: _Optional[int] = ..., persistent: _Optional[bool] = ..., durable: _Optional[bool] = ..., path: _Optional[_Union[ResidencyPath, str]] = ...) -> None: ...

class PutPackedOp(_message.Message):
    __slots__ = ("keys", "lengths", "arena_offset", "persistent", "durable", "path")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    ARENA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    arena_offset: int
    persistent: bool
    durable: bool
    path: ResidencyPath
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., lengths: _Optional[_Iterable[int]] = ..., arena_offset: _Optional[int] = ..., persistent: _Optional[bool] = ..., durable: _Optional[bool] = ..., path: _Optional[_Union[ResidencyPath, str]] = ...) -> None: ...

class GetOp(_message.Message):
    __slots__ = ("key", "arena_offset", "length")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ARENA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    arena_offset: int
    length: int
    def __init__(self, key: _Optional[bytes] = ..., arena_offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DeleteOp(_message.Message):
    __slots__ = ("key", "durable")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    durable: bool
    def __init__(self, key: _Optional[bytes] = ..., durable: _Optional[bool] = ...) -> None: ...

class StatOp(_message.Message):
    __slots__ = ("key", "pin_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PIN_MS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    pin_ms: int
    def __init__(self, key: _Optional[bytes] = ..., pin_ms: _Optional[int] = ...) -> None: ...

class UnpinOp(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class TouchOp(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class ReserveOp(_message.Message):
    __slots__ = ("key", "capacity", "persistent", "path")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    capacity: int
    persistent: bool
    path: str
    def __init__(self, key: _Optional[bytes] = ..., capacity: _Optional[int] = ..., persistent: _Optional[bool] = ..., path: _Optional[str] = ...) -> None: ...

class AppendOp(_message.Message):
    __slots__ = ("key", "arena_offset", "length", "durable", "expect_size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ARENA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    EXPECT_SIZE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    arena_offset: int
    length: int
    durable: bool
    expect_size: int
    def __init__(self, key: _Optional[bytes] = ..., arena_offset: _Optional[int] = ..., length: _Optional[int] = ..., durable: _Optional[bool] = ..., expect_size: _Optional[int] = ...) -> None: ...

class ReadRangeOp(_message.Message):
    __slots__ = ("key", "offset", "length", "arena_offset")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ARENA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    offset: int
    length: int
    arena_offset: int
    def __init__(self, key: _Optional[bytes] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., arena_offset: _Optional[int] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("put", "get", "delete", "reserve", "append", "read_range", "stat", "unpin", "touch", "put_packed")
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    READ_RANGE_FIELD_NUMBER: _ClassVar[int]
    STAT_FIELD_NUMBER: _ClassVar[int]
    UNPIN_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    PUT_PACKED_FIELD_NUMBER: _ClassVar[int]
    put: PutOp
    get: GetOp
    delete: DeleteOp
    reserve: ReserveOp
    append: AppendOp
    read_range: ReadRangeOp
    stat: StatOp
    unpin: UnpinOp
    touch: TouchOp
    put_packed: PutPackedOp
    def __init__(self, put: _Optional[_Union[PutOp, _Mapping]] = ..., get: _Optional[_Union[GetOp, _Mapping]] = ..., delete: _Optional[_Union[DeleteOp, _Mapping]] = ..., reserve: _Optional[_Union[ReserveOp, _Mapping]] = ..., append: _Optional[_Union[AppendOp, _Mapping]] = ..., read_range: _Optional[_Union[ReadRangeOp, _Mapping]] = ..., stat: _Optional[_Union[StatOp, _Mapping]] = ..., unpin: _Optional[_Union[UnpinOp, _Mapping]] = ..., touch: _Optional[_Union[TouchOp, _Mapping]] = ..., put_packed: _Optional[_Union[PutPackedOp, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops", "stop_on_error")
    OPS_FIELD_NUMBER: _ClassVar[int]
    STOP_ON_ERROR_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    stop_on_error: bool
    def __init__(self, ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ..., stop_on_error: _Optional[bool] = ...) -> None: ...

class OpResult(_message.Message):
    __slots__ = ("code", "message", "size", "generation", "path", "persistent", "pinned", "generations", "paths")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    size: int
    generation: int
    path: ResidencyPath
    persistent: bool
    pinned: bool
    generations: _containers.RepeatedScalarFieldContainer[int]
    paths: _containers.RepeatedScalarFieldContainer[ResidencyPath]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., size: _Optional[int] = ..., generation: _Optional[int] = ..., path: _Optional[_Union[ResidencyPath, str]] = ..., persistent: _Optional[bool] = ..., pinned: _Optional[bool] = ..., generations: _Optional[_Iterable[int]] = ..., paths: _Optional[_Iterable[_Union[ResidencyPath, str]]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OpResult]
    def __init__(self, results: _Optional[_Iterable[_Union[OpResult, _Mapping]]] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("key", "size", "path", "generation", "persistent", "last_access", "checksum", "capacity")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    size: int
    path: ResidencyPath
    generation: int
    persistent: bool
    last_access: float
    checksum: int
    capacity: int
    def __init__(self, key: _Optional[bytes] = ..., size: _Optional[int] = ..., path: _Optional[_Union[ResidencyPath, str]] = ..., generation: _Optional[int] = ..., persistent: _Optional[bool] = ..., last_access: _Optional[float] = ..., checksum: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("prefix", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    limit: int
    def __init__(self, prefix: _Optional[bytes] = ..., limit: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ...) -> None: ...

class SessionInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "tenant", "arena_bytes", "quota_bytes", "used_bytes", "max_batch_ops", "max_object_bytes", "max_pins_per_session", "max_pin_ms", "evict_persistent")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ARENA_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_OPS_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PINS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_PIN_MS_FIELD_NUMBER: _ClassVar[int]
    EVICT_PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tenant: str
    arena_bytes: int
    quota_bytes: int
    used_bytes: int
    max_batch_ops: int
    max_object_bytes: int
    max_pins_per_session: int
    max_pin_ms: int
    evict_persistent: bool
    def __init__(self, session_id: _Optional[str] = ..., tenant: _Optional[str] = ..., arena_bytes: _Optional[int] = ..., quota_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., max_batch_ops: _Optional[int] = ..., max_object_bytes: _Optional[int] = ..., max_pins_per_session: _Optional[int] = ..., max_pin_ms: _Optional[int] = ..., evict_persistent: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PathUsage(_message.Message):
    __slots__ = ("path", "objects", "bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    objects: int
    bytes: int
    def __init__(self, path: _Optional[str] = ..., objects: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("bounds_ms", "counts", "count", "sum_ms")
    BOUNDS_MS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_MS_FIELD_NUMBER: _ClassVar[int]
    bounds_ms: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    count: int
    sum_ms: float
    def __init__(self, bounds_ms: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., count: _Optional[int] = ..., sum_ms: _Optional[float] = ...) -> None: ...

class TenantMetrics(_message.Message):
    __slots__ = ("tenant", "path", "op", "ops", "bytes", "errors", "latency")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    path: str
    op: str
    ops: int
    bytes: int
    errors: int
    latency: Histogram
    def __init__(self, tenant: _Optional[str] = ..., path: _Optional[str] = ..., op: _Optional[str] = ..., ops: _Optional[int] = ..., bytes: _Optional[int] = ..., errors: _Optional[int] = ..., latency: _Optional[_Union[Histogram, _Mapping]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "namespace_path", "namespace_kind", "namespace_uuid", "block_size", "capacity_bytes", "free_bytes", "largest_free_bytes", "fragmentation", "sessions", "uptime_s", "paths", "metrics", "state_dir", "residency_json", "residency", "evictions", "evicted_bytes", "pins")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_PATH_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_UUID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTATION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_JSON_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    version: str
    namespace_path: str
    namespace_kind: str
    namespace_uuid: str
    block_size: int
    capacity_bytes: int
    free_bytes: int
    largest_free_bytes: int
    fragmentation: float
    sessions: int
    uptime_s: float
    paths: _containers.RepeatedCompositeFieldContainer[PathUsage]
    metrics: _containers.RepeatedCompositeFieldContainer[TenantMetrics]
    state_dir: str
    residency_json: str
    residency: ResidencyStatus
    evictions: int
    evicted_bytes: int
    pins: int
    def __init__(self, version: _Optional[str] = ..., namespace_path: _Optional[str] = ..., namespace_kind: _Optional[str] = ..., namespace_uuid: _Optional[str] = ..., block_size: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., largest_free_bytes: _Optional[int] = ..., fragmentation: _Optional[float] = ..., sessions: _Optional[int] = ..., uptime_s: _Optional[float] = ..., paths: _Optional[_Iterable[_Union[PathUsage, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[TenantMetrics, _Mapping]]] = ..., state_dir: _Optional[str] = ..., residency_json: _Optional[str] = ..., residency: _Optional[_Union[ResidencyStatus, _Mapping]] = ..., evictions: _Optional[int] = ..., evicted_bytes: _Optional[int] = ..., pins: _Optional[int] = ...) -> None: ...

class TenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant", "uid", "label", "objects", "bytes", "quota_bytes", "sessions", "paths", "admin_sessions", "evictions", "evicted_bytes", "pins")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    uid: int
    label: str
    objects: int
    bytes: int
    quota_bytes: int
    sessions: int
    paths: _containers.RepeatedCompositeFieldContainer[PathUsage]
    admin_sessions: int
    evictions: int
    evicted_bytes: int
    pins: int
    def __init__(self, tenant: _Optional[str] = ..., uid: _Optional[int] = ..., label: _Optional[str] = ..., objects: _Optional[int] = ..., bytes: _Optional[int] = ..., quota_bytes: _Optional[int] = ..., sessions: _Optional[int] = ..., paths: _Optional[_Iterable[_Union[PathUsage, _Mapping]]] = ..., admin_sessions: _Optional[int] = ..., evictions: _Optional[int] = ..., evicted_bytes: _Optional[int] = ..., pins: _Optional[int] = ...) -> None: ...

class TenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class ExtentsRequest(_message.Message):
    __slots__ = ("tenant", "limit", "after_tenant", "after_key")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_TENANT_FIELD_NUMBER: _ClassVar[int]
    AFTER_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    limit: int
    after_tenant: str
    after_key: bytes
    def __init__(self, tenant: _Optional[str] = ..., limit: _Optional[int] = ..., after_tenant: _Optional[str] = ..., after_key: _Optional[bytes] = ...) -> None: ...

class Extent(_message.Message):
    __slots__ = ("tenant", "key", "path", "offset", "length", "size", "persistent", "generation")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    key: bytes
    path: str
    offset: int
    length: int
    size: int
    persistent: bool
    generation: int
    def __init__(self, tenant: _Optional[str] = ..., key: _Optional[bytes] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., size: _Optional[int] = ..., persistent: _Optional[bool] = ..., generation: _Optional[int] = ...) -> None: ...

class ExtentsResponse(_message.Message):
    __slots__ = ("extents", "more")
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    more: bool
    def __init__(self, extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("serving", "problems")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, serving: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class ResidencyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResidencyBudget(_message.Message):
    __slots__ = ("total", "raw", "effective_available", "pagecache_resident", "reserve", "hysteresis")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_RESIDENT_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    HYSTERESIS_FIELD_NUMBER: _ClassVar[int]
    total: int
    raw: int
    effective_available: int
    pagecache_resident: int
    reserve: int
    hysteresis: int
    def __init__(self, total: _Optional[int] = ..., raw: _Optional[int] = ..., effective_available: _Optional[int] = ..., pagecache_resident: _Optional[int] = ..., reserve: _Optional[int] = ..., hysteresis: _Optional[int] = ...) -> None: ...

class MemorySignals(_message.Message):
    __slots__ = ("mem_total", "mem_available", "cgroup_version", "cgroup_limit", "cgroup_usage", "cgroup_cache", "psi_some_avg10", "psi_full_avg10", "effective_available")
    MEM_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEM_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CGROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    CGROUP_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CGROUP_USAGE_FIELD_NUMBER: _ClassVar[int]
    CGROUP_CACHE_FIELD_NUMBER: _ClassVar[int]
    PSI_SOME_AVG10_FIELD_NUMBER: _ClassVar[int]
    PSI_FULL_AVG10_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    mem_total: int
    mem_available: int
    cgroup_version: int
    cgroup_limit: int
    cgroup_usage: int
    cgroup_cache: int
    psi_some_avg10: float
    psi_full_avg10: float
    effective_available: int
    def __init__(self, mem_total: _Optional[int] = ..., mem_available: _Optional[int] = ..., cgroup_version: _Optional[int] = ..., cgroup_limit: _Optional[int] = ..., cgroup_usage: _Optional[int] = ..., cgroup_cache: _Optional[int] = ..., psi_some_avg10: _Optional[float] = ..., psi_full_avg10: _Optional[float] = ..., effective_available: _Optional[int] = ...) -> None: ...

class PsiStatus(_message.Message):
    __slots__ = ("mode", "events", "last_event_age_s")
    MODE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    mode: str
    events: int
    last_event_age_s: float
    def __init__(self, mode: _Optional[str] = ..., events: _Optional[int] = ..., last_event_age_s: _Optional[float] = ...) -> None: ...

class PageCacheStatus(_message.Message):
    __slots__ = ("max_bytes", "used", "free", "slabs", "refusing")
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    SLABS_FIELD_NUMBER: _ClassVar[int]
    REFUSING_FIELD_NUMBER: _ClassVar[int]
    max_bytes: int
    used: int
    free: int
    slabs: int
    refusing: str
    def __init__(self, max_bytes: _Optional[int] = ..., used: _Optional[int] = ..., free: _Optional[int] = ..., slabs: _Optional[int] = ..., refusing: _Optional[str] = ...) -> None: ...

class TenantResidency(_message.Message):
    __slots__ = ("tenant", "pagecache", "direct", "share", "weight")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    pagecache: int
    direct: int
    share: int
    weight: float
    def __init__(self, tenant: _Optional[str] = ..., pagecache: _Optional[int] = ..., direct: _Optional[int] = ..., share: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("time", "tenant", "key", "src", "dst", "bytes", "ms", "ok", "reason", "error")
    TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    time: float
    tenant: str
    key: bytes
    src: str
    dst: str
    bytes: int
    ms: float
    ok: bool
    reason: str
    error: str
    def __init__(self, time: _Optional[float] = ..., tenant: _Optional[str] = ..., key: _Optional[bytes] = ..., src: _Optional[str] = ..., dst: _Optional[str] = ..., bytes: _Optional[int] = ..., ms: _Optional[float] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ResidencyTotals(_message.Message):
    __slots__ = ("placed_pagecache", "placed_direct", "migrations", "failed_migrations", "demoted_bytes", "promoted_bytes", "pagecache_bytes", "direct_bytes", "pagecache_refusals")
    PLACED_PAGECACHE_FIELD_NUMBER: _ClassVar[int]
    PLACED_DIRECT_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    FAILED_MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    DEMOTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIRECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_REFUSALS_FIELD_NUMBER: _ClassVar[int]
    placed_pagecache: int
    placed_direct: int
    migrations: int
    failed_migrations: int
    demoted_bytes: int
    promoted_bytes: int
    pagecache_bytes: int
    direct_bytes: int
    pagecache_refusals: int
    def __init__(self, placed_pagecache: _Optional[int] = ..., placed_direct: _Optional[int] = ..., migrations: _Optional[int] = ..., failed_migrations: _Optional[int] = ..., demoted_bytes: _Optional[int] = ..., promoted_bytes: _Optional[int] = ..., pagecache_bytes: _Optional[int] = ..., direct_bytes: _Optional[int] = ..., pagecache_refusals: _Optional[int] = ...) -> None: ...

class ResidencyStatus(_message.Message):
    __slots__ = ("mode", "tick_s", "ticks", "last_tick_age_s", "migration_bytes_per_s", "budget", "signals", "psi", "pagecache", "tenants", "migrations", "totals", "feedback")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TICK_S_FIELD_NUMBER: _ClassVar[int]
    TICKS_FIELD_NUMBER: _ClassVar[int]
    LAST_TICK_AGE_S_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    mode: str
    tick_s: float
    ticks: int
    last_tick_age_s: float
    migration_bytes_per_s: int
    budget: ResidencyBudget
    signals: MemorySignals
    psi: PsiStatus
    pagecache: PageCacheStatus
    tenants: _containers.RepeatedCompositeFieldContainer[TenantResidency]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    totals: ResidencyTotals
    feedback: ResidencyFeedback
    def __init__(self, mode: _Optional[str] = ..., tick_s: _Optional[float] = ..., ticks: _Optional[int] = ..., last_tick_age_s: _Optional[float] = ..., migration_bytes_per_s: _Optional[int] = ..., budget: _Optional[_Union[ResidencyBudget, _Mapping]] = ..., signals: _Optional[_Union[MemorySignals, _Mapping]] = ..., psi: _Optional[_Union[PsiStatus, _Mapping]] = ..., pagecache: _Optional[_Union[PageCacheStatus, _Mapping]] = ..., tenants: _Optional[_Iterable[_Union[TenantResidency, _Mapping]]] = ..., migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ..., totals: _Optional[_Union[ResidencyTotals, _Mapping]] = ..., feedback: _Optional[_Union[ResidencyFeedback, _Mapping]] = ...) -> None: ...

class ResidencyFeedback(_message.Message):
    __slots__ = ("cap", "ceiling", "room", "pressure", "refault_bytes_per_s", "hit_ratio", "pagecache_fraction", "write_burst", "write_path", "pagecache_read_gbps", "direct_read_gbps", "pagecache_write_gbps", "direct_write_gbps")
    CAP_FIELD_NUMBER: _ClassVar[int]
    CEILING_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    REFAULT_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    HIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    WRITE_BURST_FIELD_NUMBER: _ClassVar[int]
    WRITE_PATH_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_READ_GBPS_FIELD_NUMBER: _ClassVar[int]
    DIRECT_READ_GBPS_FIELD_NUMBER: _ClassVar[int]
    PAGECACHE_WRITE_GBPS_FIELD_NUMBER: _ClassVar[int]
    DIRECT_WRITE_GBPS_FIELD_NUMBER: _ClassVar[int]
    cap: int
    ceiling: int
    room: int
    pressure: str
    refault_bytes_per_s: float
    hit_ratio: float
    pagecache_fraction: float
    write_burst: bool
    write_path: str
    pagecache_read_gbps: float
    direct_read_gbps: float
    pagecache_write_gbps: float
    direct_write_gbps: float
    def __init__(self, cap: _Optional[int] = ..., ceiling: _Optional[int] = ..., room: _Optional[int] = ..., pressure: _Optional[str] = ..., refault_bytes_per_s: _Optional[float] = ..., hit_ratio: _Optional[float] = ..., pagecache_fraction: _Optional[float] = ..., write_burst: _Optional[bool] = ..., write_path: _Optional[str] = ..., pagecache_read_gbps: _Optional[float] = ..., direct_read_gbps: _Optional[float] = ..., pagecache_write_gbps: _Optional[float] = ..., direct_write_gbps: _Optional[float] = ...) -> None: ...

class ResidencyResponse(_message.Message):
    __slots__ = ("json", "status")
    JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    json: str
    status: ResidencyStatus
    def __init__(self, json: _Optional[str] = ..., status: _Optional[_Union[ResidencyStatus, _Mapping]] = ...) -> None: ...
