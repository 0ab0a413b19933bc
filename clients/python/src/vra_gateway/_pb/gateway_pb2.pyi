from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompilationPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPILATION_PHASE_UNSPECIFIED: _ClassVar[CompilationPhase]
    COMPILATION_PHASE_DRAFT: _ClassVar[CompilationPhase]
    COMPILATION_PHASE_EXPAND: _ClassVar[CompilationPhase]
    COMPILATION_PHASE_REFINE: _ClassVar[CompilationPhase]
    COMPILATION_PHASE_ABSTRACT: _ClassVar[CompilationPhase]

class SectionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECTION_TYPE_UNSPECIFIED: _ClassVar[SectionType]
    SECTION_TYPE_INTRODUCTION: _ClassVar[SectionType]
    SECTION_TYPE_CONCLUSION: _ClassVar[SectionType]
    SECTION_TYPE_ANALYSIS: _ClassVar[SectionType]
    SECTION_TYPE_METHODOLOGY: _ClassVar[SectionType]
    SECTION_TYPE_IMPLEMENTATION: _ClassVar[SectionType]
    SECTION_TYPE_OTHER: _ClassVar[SectionType]

class ProviderTier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_TIER_UNSPECIFIED: _ClassVar[ProviderTier]
    PROVIDER_TIER_PRIMARY: _ClassVar[ProviderTier]
    PROVIDER_TIER_SECONDARY: _ClassVar[ProviderTier]

class FallbackReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_REASON_UNSPECIFIED: _ClassVar[FallbackReason]
    FALLBACK_REASON_COST_LIMIT: _ClassVar[FallbackReason]
    FALLBACK_REASON_PRIMARY_ERROR: _ClassVar[FallbackReason]
    FALLBACK_REASON_CIRCUIT_OPEN: _ClassVar[FallbackReason]
    FALLBACK_REASON_LEDGER_UNAVAILABLE: _ClassVar[FallbackReason]
    FALLBACK_REASON_CLIENT_QUOTA: _ClassVar[FallbackReason]

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_MODE_UNSPECIFIED: _ClassVar[CacheMode]
    CACHE_MODE_NO_CACHE: _ClassVar[CacheMode]
    CACHE_MODE_NO_STORE: _ClassVar[CacheMode]
    CACHE_MODE_ONLY_IF_CACHED: _ClassVar[CacheMode]

class CacheStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_STATUS_UNSPECIFIED: _ClassVar[CacheStatus]
    CACHE_STATUS_MISS: _ClassVar[CacheStatus]
    CACHE_STATUS_HIT: _ClassVar[CacheStatus]
    CACHE_STATUS_BYPASS: _ClassVar[CacheStatus]

class ChatRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHAT_ROLE_UNSPECIFIED: _ClassVar[ChatRole]
    CHAT_ROLE_SYSTEM: _ClassVar[ChatRole]
    CHAT_ROLE_USER: _ClassVar[ChatRole]
    CHAT_ROLE_ASSISTANT: _ClassVar[ChatRole]
COMPILATION_PHASE_UNSPECIFIED: CompilationPhase
COMPILATION_PHASE_DRAFT: CompilationPhase
COMPILATION_PHASE_EXPAND: CompilationPhase
COMPILATION_PHASE_REFINE: CompilationPhase
COMPILATION_PHASE_ABSTRACT: CompilationPhase
SECTION_TYPE_UNSPECIFIED: SectionType
SECTION_TYPE_INTRODUCTION: SectionType
SECTION_TYPE_CONCLUSION: SectionType
SECTION_TYPE_ANALYSIS: SectionType
SECTION_TYPE_METHODOLOGY: SectionType
SECTION_TYPE_IMPLEMENTATION: SectionType
SECTION_TYPE_OTHER: SectionType
PROVIDER_TIER_UNSPECIFIED: ProviderTier
PROVIDER_TIER_PRIMARY: ProviderTier
PROVIDER_TIER_SECONDARY: ProviderTier
FALLBACK_REASON_UNSPECIFIED: FallbackReason
FALLBACK_REASON_COST_LIMIT: FallbackReason
FALLBACK_REASON_PRIMARY_ERROR: FallbackReason
FALLBACK_REASON_CIRCUIT_OPEN: FallbackReason
FALLBACK_REASON_LEDGER_UNAVAILABLE: FallbackReason
FALLBACK_REASON_CLIENT_QUOTA: FallbackReason
CACHE_MODE_UNSPECIFIED: CacheMode
CACHE_MODE_NO_CACHE: CacheMode
CACHE_MODE_NO_STORE: CacheMode
CACHE_MODE_ONLY_IF_CACHED: CacheMode
CACHE_STATUS_UNSPECIFIED: CacheStatus
CACHE_STATUS_MISS: CacheStatus
CACHE_STATUS_HIT: CacheStatus
CACHE_STATUS_BYPASS: CacheStatus
CHAT_ROLE_UNSPECIFIED: ChatRole
CHAT_ROLE_SYSTEM: ChatRole
CHAT_ROLE_USER: ChatRole
CHAT_ROLE_ASSISTANT: ChatRole

class GenerationOptions(_message.Message):
    __slots__ = ("temperature", "max_tokens", "stop", "top_p", "seed", "cache", "max_age_secs")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_SECS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    top_p: float
    seed: int
    cache: CacheMode
    max_age_secs: int
    def __init__(self, temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., cache: _Optional[_Union[CacheMode, str]] = ..., max_age_secs: _Optional[int] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: ChatRole
    content: str
    def __init__(self, role: _Optional[_Union[ChatRole, str]] = ..., content: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("tier", "provider", "model", "cloud", "fallback_reason", "rule")
    TIER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    tier: ProviderTier
    provider: str
    model: str
    cloud: bool
    fallback_reason: FallbackReason
    rule: str
    def __init__(self, tier: _Optional[_Union[ProviderTier, str]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., cloud: bool = ..., fallback_reason: _Optional[_Union[FallbackReason, str]] = ..., rule: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "estimated", "cached")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    estimated: bool
    cached: bool
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., estimated: bool = ..., cached: bool = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("cloud_calls_used", "cloud_calls_limit", "exhausted", "cloud_cost_used_usd", "cloud_cost_reserved_usd", "cloud_cost_limit_usd")
    CLOUD_CALLS_USED_FIELD_NUMBER: _ClassVar[int]
    CLOUD_CALLS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    CLOUD_COST_USED_USD_FIELD_NUMBER: _ClassVar[int]
    CLOUD_COST_RESERVED_USD_FIELD_NUMBER: _ClassVar[int]
    CLOUD_COST_LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    cloud_calls_used: int
    cloud_calls_limit: int
    exhausted: bool
    cloud_cost_used_usd: float
    cloud_cost_reserved_usd: float
    cloud_cost_limit_usd: float
    def __init__(self, cloud_calls_used: _Optional[int] = ..., cloud_calls_limit: _Optional[int] = ..., exhausted: bool = ..., cloud_cost_used_usd: _Optional[float] = ..., cloud_cost_reserved_usd: _Optional[float] = ..., cloud_cost_limit_usd: _Optional[float] = ...) -> None: ...

class ClientQuota(_message.Message):
    __slots__ = ("used", "limit")
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    used: int
    limit: int
    def __init__(self, used: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("report_id", "section_id", "section_type", "phase", "prompt", "system_prompt", "options", "messages")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    SECTION_ID_FIELD_NUMBER: _ClassVar[int]
    SECTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    section_id: str
    section_type: SectionType
    phase: CompilationPhase
    prompt: str
    system_prompt: str
    options: GenerationOptions
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, report_id: _Optional[str] = ..., section_id: _Optional[str] = ..., section_type: _Optional[_Union[SectionType, str]] = ..., phase: _Optional[_Union[CompilationPhase, str]] = ..., prompt: _Optional[str] = ..., system_prompt: _Optional[str] = ..., options: _Optional[_Union[GenerationOptions, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "route", "usage", "budget", "attempts", "finish_reason", "cost_usd", "cache_status")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    CACHE_STATUS_FIELD_NUMBER: _ClassVar[int]
    text: str
    route: Route
    usage: Usage
    budget: Budget
    attempts: int
    finish_reason: str
    cost_usd: float
    cache_status: CacheStatus
    def __init__(self, text: _Optional[str] = ..., route: _Optional[_Union[Route, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., attempts: _Optional[int] = ..., finish_reason: _Optional[str] = ..., cost_usd: _Optional[float] = ..., cache_status: _Optional[_Union[CacheStatus, str]] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("report_id", "section_id", "section_type", "phase", "prompt", "system_prompt", "options", "messages")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    SECTION_ID_FIELD_NUMBER: _ClassVar[int]
    SECTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    section_id: str
    section_type: SectionType
    phase: CompilationPhase
    prompt: str
    system_prompt: str
    options: GenerationOptions
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, report_id: _Optional[str] = ..., section_id: _Optional[str] = ..., section_type: _Optional[_Union[SectionType, str]] = ..., phase: _Optional[_Union[CompilationPhase, str]] = ..., prompt: _Optional[str] = ..., system_prompt: _Optional[str] = ..., options: _Optional[_Union[GenerationOptions, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("delta", "done")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    delta: str
    done: GenerateResponse
    def __init__(self, delta: _Optional[str] = ..., done: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class ResolveRouteRequest(_message.Message):
    __slots__ = ("report_id", "section_type", "phase")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    SECTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    section_type: SectionType
    phase: CompilationPhase
    def __init__(self, report_id: _Optional[str] = ..., section_type: _Optional[_Union[SectionType, str]] = ..., phase: _Optional[_Union[CompilationPhase, str]] = ...) -> None: ...

class ResolveRouteResponse(_message.Message):
    __slots__ = ("route", "budget", "client_quota")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    CLIENT_QUOTA_FIELD_NUMBER: _ClassVar[int]
    route: Route
    budget: Budget
    client_quota: ClientQuota
    def __init__(self, route: _Optional[_Union[Route, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., client_quota: _Optional[_Union[ClientQuota, _Mapping]] = ...) -> None: ...

class GetReportUsageRequest(_message.Message):
    __slots__ = ("report_id",)
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    def __init__(self, report_id: _Optional[str] = ...) -> None: ...

class GetReportUsageResponse(_message.Message):
    __slots__ = ("report_id", "budget", "primary_calls", "secondary_calls", "fallbacks", "cloud_usage", "local_usage", "client_quota", "cost", "phases", "cached_calls", "cache_saved_usd")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_CALLS_FIELD_NUMBER: _ClassVar[int]
    SECONDARY_CALLS_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_USAGE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_USAGE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_QUOTA_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    CACHED_CALLS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    budget: Budget
    primary_calls: int
    secondary_calls: int
    fallbacks: int
    cloud_usage: Usage
    local_usage: Usage
    client_quota: ClientQuota
    cost: ReportCost
    phases: _containers.RepeatedCompositeFieldContainer[PhaseUsage]
    cached_calls: int
    cache_saved_usd: float
    def __init__(self, report_id: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., primary_calls: _Optional[int] = ..., secondary_calls: _Optional[int] = ..., fallbacks: _Optional[int] = ..., cloud_usage: _Optional[_Union[Usage, _Mapping]] = ..., local_usage: _Optional[_Union[Usage, _Mapping]] = ..., client_quota: _Optional[_Union[ClientQuota, _Mapping]] = ..., cost: _Optional[_Union[ReportCost, _Mapping]] = ..., phases: _Optional[_Iterable[_Union[PhaseUsage, _Mapping]]] = ..., cached_calls: _Optional[int] = ..., cache_saved_usd: _Optional[float] = ...) -> None: ...

class ReportCost(_message.Message):
    __slots__ = ("cloud_usd", "local_usd", "total_usd", "all_cloud_usd", "savings_usd", "unpriced_calls", "abandoned_usd")
    CLOUD_USD_FIELD_NUMBER: _ClassVar[int]
    LOCAL_USD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_USD_FIELD_NUMBER: _ClassVar[int]
    ALL_CLOUD_USD_FIELD_NUMBER: _ClassVar[int]
    SAVINGS_USD_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_CALLS_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_USD_FIELD_NUMBER: _ClassVar[int]
    cloud_usd: float
    local_usd: float
    total_usd: float
    all_cloud_usd: float
    savings_usd: float
    unpriced_calls: int
    abandoned_usd: float
    def __init__(self, cloud_usd: _Optional[float] = ..., local_usd: _Optional[float] = ..., total_usd: _Optional[float] = ..., all_cloud_usd: _Optional[float] = ..., savings_usd: _Optional[float] = ..., unpriced_calls: _Optional[int] = ..., abandoned_usd: _Optional[float] = ...) -> None: ...

class PhaseUsage(_message.Message):
    __slots__ = ("phase", "tier", "calls", "usage", "cost_usd", "cached_calls", "cache_saved_usd")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    CACHED_CALLS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    phase: CompilationPhase
    tier: ProviderTier
    calls: int
    usage: Usage
    cost_usd: float
    cached_calls: int
    cache_saved_usd: float
    def __init__(self, phase: _Optional[_Union[CompilationPhase, str]] = ..., tier: _Optional[_Union[ProviderTier, str]] = ..., calls: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., cached_calls: _Optional[int] = ..., cache_saved_usd: _Optional[float] = ...) -> None: ...

class PurgeCacheRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class PurgeCacheResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...
