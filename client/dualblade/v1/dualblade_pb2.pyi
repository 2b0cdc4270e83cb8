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
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("put", "get", "delete")
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    put: PutOp
    get: GetOp
    delete: DeleteOp
    def __init__(self, put: _Optional[_Union[PutOp, _Mapping]] = ..., get: _Optional[_Union[GetOp, _Mapping]] = ..., delete: _Optional[_Union[DeleteOp, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops", "stop_on_error")
    OPS_FIELD_NUMBER: _ClassVar[int]
    STOP_ON_ERROR_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    stop_on_error: bool
    def __init__(self, ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ..., stop_on_error: _Optional[bool] = ...) -> None: ...

class OpResult(_message.Message):
    __slots__ = ("code", "message", "size", "generation", "path")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    size: int
    generation: int
    path: ResidencyPath
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., size: _Optional[int] = ..., generation: _Optional[int] = ..., path: _Optional[_Union[ResidencyPath, str]] = ...) -> None: ...

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
    __slots__ = ("key", "size", "path", "generation", "persistent", "last_access", "checksum")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    size: int
    path: ResidencyPath
    generation: int
    persistent: bool
    last_access: float
    checksum: int
    def __init__(self, key: _Optional[bytes] = ..., size: _Optional[int] = ..., path: _Optional[_Union[ResidencyPath, str]] = ..., generation: _Optional[int] = ..., persistent: _Optional[bool] = ..., last_access: _Optional[float] = ..., checksum: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("session_id", "tenant", "arena_bytes", "quota_bytes", "used_bytes", "max_batch_ops", "max_object_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ARENA_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_OPS_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tenant: str
    arena_bytes: int
    quota_bytes: int
    used_bytes: int
    max_batch_ops: int
    max_object_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., tenant: _Optional[str] = ..., arena_bytes: _Optional[int] = ..., quota_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., max_batch_ops: _Optional[int] = ..., max_object_bytes: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("version", "namespace_path", "namespace_kind", "namespace_uuid", "block_size", "capacity_bytes", "free_bytes", "largest_free_bytes", "fragmentation", "sessions", "uptime_s", "paths", "metrics", "state_dir", "residency_json")
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
    def __init__(self, version: _Optional[str] = ..., namespace_path: _Optional[str] = ..., namespace_kind: _Optional[str] = ..., namespace_uuid: _Optional[str] = ..., block_size: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., largest_free_bytes: _Optional[int] = ..., fragmentation: _Optional[float] = ..., sessions: _Optional[int] = ..., uptime_s: _Optional[float] = ..., paths: _Optional[_Iterable[_Union[PathUsage, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[TenantMetrics, _Mapping]]] = ..., state_dir: _Optional[str] = ..., residency_json: _Optional[str] = ...) -> None: ...

class TenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant", "uid", "label", "objects", "bytes", "quota_bytes", "sessions", "paths")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    uid: int
    label: str
    objects: int
    bytes: int
    quota_bytes: int
    sessions: int
    paths: _containers.RepeatedCompositeFieldContainer[PathUsage]
    def __init__(self, tenant: _Optional[str] = ..., uid: _Optional[int] = ..., label: _Optional[str] = ..., objects: _Optional[int] = ..., bytes: _Optional[int] = ..., quota_bytes: _Optional[int] = ..., sessions: _Optional[int] = ..., paths: _Optional[_Iterable[_Union[PathUsage, _Mapping]]] = ...) -> None: ...

class TenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class ExtentsRequest(_message.Message):
    __slots__ = ("tenant", "limit")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    limit: int
    def __init__(self, tenant: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("extents",)
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    def __init__(self, extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ...) -> None: ...

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

class ResidencyResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
