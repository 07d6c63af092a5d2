"""The project file (``hybridserve.yaml``): loading, validation, environment overrides.

Everything the three paths share is declared here once: stores, entities, feature views,
models and routes. Loading never shows a traceback for a user's mistake: every problem is
reported as ``file: key.path: what was expected`` and raised as :class:`ConfigError`.
Relative paths in the file are resolved against the file's directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from hybridserve.errors import ConfigError, FeatureViewNotFound, RouteNotFound
from hybridserve.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; written as ``30s``, ``250ms``, ``1h``, ``7d`` or a number of seconds."""
Size = Annotated[int, BeforeValidator(parse_size)]
DType = Literal["float", "int", "bool", "str"]
Compile = Literal["auto", "tl2cgen", "treelite", "none"]
"""A model's ``compile`` option: how a tree ensemble is scored (``runtimes/compiled.py``)."""

DEFAULT_FILENAME = "hybridserve.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistryConfig(_Strict):
    url: str = "sqlite:///.hybridserve/registry.db"
    """``sqlite:///path`` (embedded default) or ``postgresql://user@host/db``."""
    artifacts: str = ".hybridserve/artifacts"
    """Directory holding model artifacts (local or a shared mount)."""


class StoresConfig(_Strict):
    online: str = "sqlite:///.hybridserve/online.db"
    """Online features: ``memory://``, ``sqlite:///path`` or ``redis://host:port/db``."""
    predictions: str | None = None
    """Prediction store; defaults to the online store's URL."""
    prefix: str = "hs:"
    """Key prefix, so several projects can share one Redis."""
    prediction_retention: Duration | None = 7 * 86400.0
    """How long a prediction entry (``p:``, and a batch run's ``pb:``) is kept after it was
    last written; ``null``: until replaced or dropped with its run."""
    feature_retention: Duration | None = 7 * 86400.0
    """How long an online feature entry (``f:``) is kept after it was last written, or the
    view's ``ttl`` when that is longer (a value is never dropped while it may be served);
    ``null``: until replaced."""
    keep_runs: int = Field(default=2, ge=2)
    """Batch runs whose records a route keeps: the served one and ``keep_runs - 1`` before it.
    At least 2: servers may read the previous run for up to a second after a publish."""

    @property
    def predictions_url(self) -> str:
        return self.predictions or self.online


class EntityConfig(_Strict):
    key: str
    """Name of the column / field that holds the entity key."""
    description: str = ""


class FeatureSpec(_Strict):
    dtype: DType = "float"
    on_missing: Literal["reject", "impute"] = "reject"
    """What the Scorer does with a missing or NaN value: reject the row or impute ``default``."""
    default: float | int | bool | str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _default_for_impute(self) -> FeatureSpec:
        if self.on_missing == "impute" and self.default is None:
            raise ValueError("on_missing 'impute' needs a 'default' value")
        return self


def _feature_spec(value: Any) -> Any:
    # ``amount: float`` is shorthand for ``amount: {dtype: float}``.
    return {"dtype": value} if isinstance(value, str) else value


class SourceConfig(_Strict):
    path: str
    """A Parquet file or directory, or a CSV file."""
    timestamp: str = "event_time"
    """Column holding each row's event time."""
    format: Literal["parquet", "csv"] | None = None
    """Inferred from the path's suffix when not given."""

    @property
    def resolved_format(self) -> Literal["parquet", "csv"]:
        if self.format is not None:
            return self.format
        return "csv" if self.path.lower().endswith(".csv") else "parquet"


class FeatureViewConfig(_Strict):
    entity: str
    features: dict[str, Annotated[FeatureSpec, BeforeValidator(_feature_spec)]]
    source: SourceConfig | None = None
    ttl: Duration | None = None
    """Values older than this read as ``stale``; enforced at read time."""
    description: str = ""

    @field_validator("features")
    @classmethod
    def _non_empty(cls, value: dict[str, FeatureSpec]) -> dict[str, FeatureSpec]:
        if not value:
            raise ValueError("a feature view needs at least one feature")
        return value


class ModelConfig(_Strict):
    description: str = ""
    features: list[str] | None = None
    """Signature to use when registering an artifact that does not carry feature names."""
    compile: Compile = "auto"
    """How a tree ensemble's versions are scored (``runtimes/compiled.py``): ``tl2cgen`` (a
    gcc-compiled library), ``treelite`` (its interpreter), ``none`` (the library's predict), or
    ``auto``: the first of those that is installed and available."""


class RolloutConfig(_Strict):
    model: str
    percent: float = Field(ge=0, le=100)


class StalePredictionStep(_Strict):
    stale_prediction: Literal[True] = True
    max_age: Duration | None = None
    """Oldest stored prediction the fallback may serve (default: any age)."""


class ModelStep(_Strict):
    model: str


class DefaultStep(_Strict):
    default: float


def _fallback_step(value: Any) -> Any:
    if value == "stale_prediction":
        return {"stale_prediction": True}
    return value


def _fallback_kind(value: Any) -> str | None:
    keys = value if isinstance(value, dict) else vars(value) if isinstance(value, BaseModel) else {}
    for key, tag in (("stale_prediction", "Stale"), ("model", "Model"), ("default", "Default")):
        if key in keys:
            return tag
    return None


FallbackStep = Annotated[
    Annotated[StalePredictionStep, Tag("Stale")]
    | Annotated[ModelStep, Tag("Model")]
    | Annotated[DefaultStep, Tag("Default")],
    Discriminator(
        _fallback_kind,
        custom_error_type="fallback_step",
        custom_error_message="expected 'stale_prediction', {model: REF} or {default: NUMBER}",
    ),
    BeforeValidator(_fallback_step),
]


class StalenessBySource(_Strict):
    """One freshness bound per source of a stored prediction (a source left out: 1 h)."""

    batch: Duration = 3600.0
    stream: Duration = 3600.0
    online: Duration = 3600.0


Staleness = Annotated[
    Annotated[Duration, Tag("One")] | Annotated[StalenessBySource, Tag("BySource")],
    Discriminator(
        lambda v: "BySource" if isinstance(v, dict | StalenessBySource) else "One",
    ),
]
"""A freshness bound: one duration, or ``{batch, stream, online}`` durations."""


class LogSampling(_Strict):
    """Which of a route's answers the prediction log keeps (``quality/log.py``): a share per
    source, and how their feature values are kept."""

    online: float = Field(default=0.0, ge=0, le=1)
    """Share of online answers logged (0: none; the router then pays one attribute check)."""
    stream: float = Field(default=0.0, ge=0, le=1)
    batch: float = Field(default=0.0, ge=0, le=1)
    """Share of a batch run's rows logged (off by default: the run's snapshot holds them)."""
    features: Literal["values", "fingerprint", "none"] = "values"
    """``values``: the feature values themselves (needed for drift from the log);
    ``fingerprint``: a 16-hex-digit hash of them; ``none``."""


class DriftConfig(_Strict):
    """When a route's input or score distribution has drifted from its model's reference."""

    psi: float = Field(default=0.2, gt=0)
    """Population stability index above which a feature (or the score) has drifted."""
    ks_pvalue: float | None = Field(default=None, gt=0, lt=1)
    """Also drifted when a numeric feature's two-sample KS test gives a p-value below this
    (``null``: PSI only)."""
    missing: float = Field(default=0.1, ge=0, le=1)
    """Drifted when a feature's missing-value share rises this far above the reference's."""
    window: Duration = 3600.0
    """The sliding window of answers compared with the reference."""
    min_samples: int = Field(default=200, gt=0)
    """Fewer answers than this in the window: no judgement (too little to tell)."""
    max_samples: int = Field(default=10_000, gt=0)
    """Answers kept per route for the window (the oldest go first)."""


class QualityConfig(_Strict):
    """Online quality from ground-truth feedback (``quality/feedback.py``)."""

    window: Duration = 86400.0
    """The sliding window (by answer time) that quality figures are computed over."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """``auto``: classification when every label is 0 or 1."""
    bins: int = Field(default=10, ge=2, le=100)
    """Score bins of the calibration table."""
    max_join_age: Duration = 7 * 86400.0
    """Feedback by entity and time joins the last answer served at most this long before."""


class StageBudgets(_Strict):
    """How long each stage of the online path may take (``None``: up to the request's
    deadline). ``store``: the prediction-store read; ``features``: the online feature read;
    ``model``: queueing for and running the micro-batch."""

    store: Duration | None = None
    features: Duration | None = None
    model: Duration | None = None

    def of(self, stage: str) -> float | None:
        value: float | None = getattr(self, stage, None)
        return value


def _share(value: Any) -> Any:
    """``99.9%`` or ``0.999`` -> 0.999 (a number above 1 is read as a percent)."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                return float(text[:-1]) / 100
            except ValueError:
                raise ValueError(f"expected a share like '99.9%' or 0.999, got {value!r}") from None
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 1 < value <= 100:
        return value / 100
    return value


Share = Annotated[float, BeforeValidator(_share), Field(gt=0, lt=1)]
"""A fraction strictly between 0 and 1, written ``99.9%`` or ``0.999``."""


class SloLatency(_Strict):
    p99: Duration
    """99% of requests answer within this (a request over it spends latency budget)."""


class SloConfig(_Strict):
    """A route's service-level objective (``hybridserve slo report``, ``GET /v1/slo``)."""

    latency: SloLatency | None = None
    availability: Share = 0.999
    """Share of answers that are good: answered (2xx) and not degraded (no fallback)."""
    window: Duration = Field(default=28 * 86400.0, gt=0)


class HealthConfig(_Strict):
    """Thresholds of ``GET /v1/health`` and ``hybridserve status``."""

    window: Duration = Field(default=300.0, gt=0)
    """Answers of the last ``window`` count towards the share and p99 rules."""
    degraded_share: float = Field(default=0.05, ge=0, le=1)
    """A route whose degraded (fallback) or unanswered share is above this is degraded."""
    unavailable_share: float = Field(default=0.5, ge=0, le=1)
    """A route whose unanswered (503) share is above this is critical."""
    min_answers: int = Field(default=20, ge=1)
    """Fewer answers than this in the window: the share and p99 rules do not judge."""
    publish_interval: Duration = Field(default=2.0, gt=0)
    """How often each server process publishes its state and SLO counters to the store."""
    stream_lag: int = Field(default=10_000, ge=0)
    """A stream whose group lags more entries than this is degraded."""
    consumer_timeout: Duration = Field(default=30.0, gt=0)
    """A stream consumer is alive while its stats are younger than this."""
    batch_grace: Duration = 3600.0
    """A scheduled job is degraded when its last completed run is older than its schedule's
    interval plus this."""


class CostConfig(_Strict):
    """Prices behind "cost per 1k predictions" (``hybridserve status``, ``hybridserve
    advise``)."""

    core_hour: float = Field(default=0.0425, ge=0)
    """Price of one CPU core for an hour. The default is an example: one vCPU of an AWS
    c6i.large on-demand in us-east-1 (USD 0.085 an hour for two vCPUs)."""
    currency: str = "USD"


class ScoreBetween(_Strict):
    score_between: tuple[float, float]
    """Abstain when ``low <= score <= high`` (both ends included)."""

    @field_validator("score_between")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError("expected [low, high] with low <= high")
        return value


ReviewCondition = ScoreBetween | Literal["degraded", "missing_critical_features"]


class ReviewConfig(_Strict):
    """When a route abstains: the answer says ``decision: review`` and the case is queued."""

    when: list[ReviewCondition] = Field(min_length=1)
    """Any one of these sends an answer to review: ``{score_between: [low, high]}``,
    ``degraded`` (a fallback answered), ``missing_critical_features`` (one of
    ``critical_features`` was missing or stale when the answer was computed)."""
    queue: str | None = None
    """The review queue's name (default: the route's name)."""
    critical_features: list[str] = []
    max_pending: int = Field(default=10_000, gt=0)
    """Cases held in a server process while the database write is pending; more are dropped
    (and counted), never slowing answers."""


class Guardrails(_Strict):
    """Limits a rollout's candidate must keep; any one breached rolls it back at once.

    ``null`` switches one off. Rates are judged once ``min_samples`` answers (comparisons,
    for agreement; labelled answers, for quality) were seen in the step."""

    max_error_rate: float | None = Field(default=0.01, ge=0, le=1)
    """Share of the candidate's entities whose model call failed (an error or a timeout)."""
    max_degraded_share: float | None = Field(default=0.05, ge=0, le=1)
    """Share of the candidate's answers that a fallback gave."""
    max_p99: Duration | None = None
    """99th percentile of the latency of requests the candidate answered in (default: the
    route's ``latency_budget``)."""
    min_agreement: float | None = Field(default=0.9, ge=0, le=1)
    """Share of shadow comparisons where candidate and primary agree."""
    max_quality_drop: float | None = Field(default=0.02, ge=0)
    """How much worse than the primary the candidate's online quality may be, once feedback
    has arrived (``quality_metric``, judged only by the quality provider)."""
    quality_metric: str = "brier"
    max_drift: float | None = None
    """Largest PSI of any feature or of the scores for the candidate (when a drift provider
    is installed)."""
    min_samples: int = Field(default=50, gt=0)


class RolloutStage(_Strict):
    percent: float = Field(gt=0, le=100)
    min_time: Duration = 600.0
    """The step lasts at least this long."""
    min_answers: int = Field(default=500, ge=0)
    """... and until the candidate gave this many answers (comparisons, in the shadow step)."""
    guardrails: Guardrails | None = None
    """This step's own limits (default: the plan's)."""


def _stage(value: Any) -> Any:
    return {"percent": value} if isinstance(value, int | float) else value


StageSpec = Annotated[RolloutStage, BeforeValidator(_stage)]


class RolloutPlan(_Strict):
    """A guarded progressive rollout: shadow, then canary steps, promoted after the last."""

    shadow: StageSpec | None = RolloutStage(percent=100)
    """Score a copy of this share of computed answers on the candidate first (``null``: no
    shadow step). Copies keep being scored during the canary steps, for agreement."""
    steps: list[StageSpec] = Field(
        default=[RolloutStage(percent=p) for p in (5, 25, 50, 100)], min_length=1
    )
    """Canary shares, in order: a number (percent) or ``{percent, min_time, min_answers}``."""
    guardrails: Guardrails = Guardrails()
    alias: str | None = None
    """The alias moved to the candidate at the end (default: the route model's alias)."""

    @field_validator("steps")
    @classmethod
    def _rising(cls, value: list[RolloutStage]) -> list[RolloutStage]:
        shares = [s.percent for s in value]
        if shares != sorted(shares) or len(set(shares)) != len(shares):
            raise ValueError(f"expected rising canary percents, got {shares}")
        return value


class RouteConfig(_Strict):
    model: str
    """Model reference: ``name@alias`` or ``name/version``."""
    entity: str
    features: list[str] = []
    """Feature views (``card_profile``) or single features (``card_profile:amount_mean``)."""
    request_features: dict[str, DType] = {}
    """Features a request may send itself; they override stored values."""
    max_staleness: Staleness = 3600.0
    """How old a stored prediction may be and still be served: one bound, or one per source
    (``{batch: 24h, stream: 10m, online: 1h}``). A request's ``max_staleness`` only tightens."""
    latency_budget: Duration = 0.1
    budgets: StageBudgets = Field(default_factory=lambda: StageBudgets())
    """Per-stage limits within ``latency_budget``: a stage past its own is cut and the next
    step answers (its breaker counts a timeout)."""
    fallback: list[FallbackStep] = []
    canary: RolloutConfig | None = None
    shadow: RolloutConfig | None = None
    threshold: float | None = None
    """For classifiers: ``label = score >= threshold`` when set."""
    log: LogSampling = LogSampling()
    drift: DriftConfig = DriftConfig()
    quality: QualityConfig = QualityConfig()
    slo: SloConfig | None = None
    review: ReviewConfig | None = None
    rollout: RolloutPlan | None = None
    """The plan ``hybridserve rollout start`` uses for this route (flags override it)."""
    description: str = ""

    @model_validator(mode="after")
    def _budgets_within(self) -> RouteConfig:
        for stage in ("store", "features", "model"):
            limit = self.budgets.of(stage)
            if limit is not None and not 0 < limit <= self.latency_budget:
                raise ValueError(
                    f"budgets.{stage}: {limit * 1000:g} ms is not within the route's "
                    f"latency_budget of {self.latency_budget * 1000:g} ms"
                )
        return self

    def staleness(self, source: str) -> float:
        """The freshness bound for a stored prediction from ``source``."""
        bound = self.max_staleness
        if isinstance(bound, StalenessBySource):
            return float(getattr(bound, source, bound.online))
        return bound

    @property
    def latency_target(self) -> float:
        """What makes a request slow: the SLO's p99 when set, else the latency budget."""
        if self.slo is not None and self.slo.latency is not None:
            return self.slo.latency.p99
        return self.latency_budget

    @property
    def loosest_staleness(self) -> float:
        """The largest bound over all sources (how long L1 may keep a record)."""
        bound = self.max_staleness
        if isinstance(bound, StalenessBySource):
            return max(bound.batch, bound.stream, bound.online)
        return bound


class BatchInputConfig(_Strict):
    """Where a batch job reads entity rows: a file/directory, or a feature view's source."""

    path: str | None = None
    format: Literal["parquet", "csv"] | None = None
    view: str | None = None
    timestamp: str | None = None
    """Column with each row's feature time (``as_of``); default: the view's timestamp column,
    or ``event_time`` when present, else the run's snapshot time."""

    @model_validator(mode="after")
    def _one_of(self) -> BatchInputConfig:
        if (self.path is None) == (self.view is None):
            raise ValueError("give exactly one of 'path' or 'view'")
        return self


class BatchJobConfig(_Strict):
    route: str
    input: BatchInputConfig
    chunk_rows: int = Field(default=50_000, gt=0)
    workers: int | None = Field(default=None, gt=0)
    """Local process-pool size (default: the number of cores)."""
    executor: Literal["local", "ray", "spark"] = "local"
    ray_address: str | None = None
    """Ray cluster address (``ray://host:10001`` or ``host:6379``); none: a Ray of its own."""
    spark_master: str | None = None
    """Spark master URL (``spark://host:7077``, ``yarn``, ...); none: ``local[workers]``."""
    max_reject_share: float = Field(default=0.01, ge=0, le=1)
    """A run fails when more than this share of rows is rejected."""
    activity_column: str | None = None
    """Column ranking entities by activity, for ``--top-k-active``."""
    schedule: str | None = None
    """Cron expression (``minute hour day month weekday``) for ``serve --scheduler``."""
    runs_dir: str = ".hybridserve/runs"
    description: str = ""


class RedisSourceConfig(_Strict):
    """Redis Streams with a consumer group (the default kind)."""

    kind: Literal["redis"] = "redis"
    url: str | None = None
    """Redis URL (default: the online store's when it is Redis)."""
    stream: str | None = None
    """Redis stream key (default ``{prefix}stream:{name}``)."""
    group: str = "hybridserve"
    maxlen: int | None = Field(default=None, gt=0)
    """Approximate MAXLEN trimming on append (per partition)."""
    partitions: int = Field(default=1, ge=1, le=1024)
    """Stream keys the events are split over by a hash of their entity (``{stream}:p{i}``,
    ``i = crc32(entity) % partitions``), as Kafka partitions a topic. The consumers of the
    group divide the partitions between them, so one entity's events go to one consumer at
    a time. 1: the one key ``{stream}``."""
    member_ttl: Duration = 5.0
    """How long a consumer that stopped sending heartbeats (once a fifth of this) keeps its
    partitions before the others take them over."""


class KafkaSourceConfig(_Strict):
    """A Kafka topic read by a consumer group (``confluent-kafka``, extra ``kafka``)."""

    kind: Literal["kafka"]
    brokers: str
    """``bootstrap.servers``: ``host:port[,host:port...]``."""
    topic: str
    group: str = "hybridserve"
    partitions: int = Field(default=1, gt=0)
    """Partitions of the topics created when missing (existing topics are left alone)."""
    replication: int = Field(default=1, gt=0)
    """Replication factor of the topics created when missing."""
    session_timeout: Duration = 10.0
    """``session.timeout.ms``: how soon a dead consumer's partitions move to another one."""
    max_poll_interval: Duration = 300.0
    """``max.poll.interval.ms``: the longest a consumer may go without reading before the
    group takes its partitions away."""
    options: dict[str, str | int | float | bool] = {}
    """More librdkafka settings (``security.protocol``, ``sasl.*``, ...), for the consumer
    and the producer."""


class NatsSourceConfig(_Strict):
    """A NATS JetStream stream read by a durable pull consumer (``nats-py``, extra ``nats``)."""

    kind: Literal["nats"]
    url: str = "nats://127.0.0.1:4222"
    stream: str
    """JetStream stream name (created when missing, capturing ``subject``)."""
    subject: str | None = None
    """Subject events are published on (default ``{stream}.events``)."""
    durable: str = "hybridserve"
    """Durable consumer name: consumers with the same name share the work."""
    ack_wait: Duration = 30.0
    """An unacknowledged message is delivered again after this long (a dead consumer's)."""


class ReplaySourceConfig(_Strict):
    """JSONL/NDJSON or Parquet files, read in a fixed order and resumable."""

    kind: Literal["replay"]
    path: str
    """A JSONL or Parquet file, or a directory of them."""


class MemorySourceConfig(_Strict):
    """An in-process log (tests and embedded use)."""

    kind: Literal["memory"]
    stream: str | None = None
    """Log name (default ``{prefix}stream:{name}``)."""
    maxlen: int | None = Field(default=None, gt=0)


def _source_kind(value: Any) -> Any:
    """A source mapping without ``kind`` is a Redis one (as before kinds were a union)."""
    if isinstance(value, dict) and "kind" not in value:
        return {**value, "kind": "redis"}
    return value


StreamSourceConfig = Annotated[
    RedisSourceConfig
    | KafkaSourceConfig
    | NatsSourceConfig
    | ReplaySourceConfig
    | MemorySourceConfig,
    Field(discriminator="kind"),
    BeforeValidator(_source_kind),
]
"""``streams.X.source``: one config class per kind, chosen by ``kind``. A new kind adds its
class here and its module to ``streaming.sources.SOURCES``."""


WindowAgg = Literal["count", "sum", "mean", "min", "max", "distinct"]


class WindowFeatureConfig(_Strict):
    agg: WindowAgg
    field: str | None = None
    """The event field aggregated (not needed for ``count``)."""
    window: Duration
    kind: Literal["sliding", "tumbling"] = "sliding"
    step: Duration | None = None
    """Bucket width of a sliding window (default: window / 60)."""


class WindowsConfig(_Strict):
    view: str
    """Feature view (declared under ``feature_views``) the aggregates are written to."""
    features: dict[str, WindowFeatureConfig]


BACKFILL_HORIZON = 7 * 86400.0
"""How far behind the windows a stream accepts events by default (replays, backfills)."""


class StreamConfig(_Strict):
    source: StreamSourceConfig = RedisSourceConfig()
    entity: str
    fields: dict[str, Literal["float", "int", "bool", "str", "timestamp"]]
    entity_field: str
    id_field: str
    time_field: str
    allowed_lateness: Duration = 300.0
    max_future: Duration = 300.0
    """Events whose time is further ahead of the consumer's clock are dead-lettered."""
    max_past: Duration | None = Field(default=None, gt=0)
    """Events whose time is further behind the consumer's clock are dead-lettered (default:
    :data:`BACKFILL_HORIZON` plus the longest window plus the allowed lateness; see
    :attr:`past_bound`)."""
    max_event_size: Size = Field(default=64 * 1024, gt=0)
    """Bytes of one event's payload; a larger event is refused (413) or dead-lettered."""
    max_field_size: Size = Field(default=1024, gt=0)
    """Bytes (UTF-8) of one string field of an event."""
    windows: WindowsConfig | None = None
    route: str | None = None
    """Route scored for every touched entity (none: only maintain features)."""
    output_stream: str | None = None
    dead_letter_stream: str | None = None
    max_deliveries: int = Field(default=5, gt=0)
    batch_size: int = Field(default=500, gt=0)
    block: Duration = 0.1
    max_in_flight: int = Field(default=5000, gt=0)
    claim_idle: Duration = 30.0
    """Pending entries idle this long are reclaimed from a dead consumer."""
    dedup_ttl: Duration = 86400.0

    @model_validator(mode="after")
    def _fields_declared(self) -> StreamConfig:
        for key in ("entity_field", "id_field", "time_field"):
            if getattr(self, key) not in self.fields:
                raise ValueError(f"{key} {getattr(self, key)!r} is not one of the declared fields")
        return self

    @property
    def past_bound(self) -> float:
        """Seconds an event's time may lie behind the consumer's clock: ``max_past`` when
        set, else a week of backfill beyond what the windows and the lateness can reach."""
        if self.max_past is not None:
            return self.max_past
        feats = self.windows.features.values() if self.windows is not None else ()
        longest = max((f.window for f in feats), default=0.0)
        return BACKFILL_HORIZON + longest + self.allowed_lateness


class BreakerConfig(_Strict):
    failures: int = Field(default=5, gt=0)
    """Consecutive failures (errors or timeouts) that open a breaker."""
    error_rate: float = Field(default=0.5, gt=0, le=1)
    window: int = Field(default=20, gt=0)
    min_calls: int = Field(default=10, gt=0)
    cooldown: Duration = 5.0
    """How long an open breaker skips its dependency before letting a probe through."""


_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key, or ``None`` when it can.

    Keys are visible ASCII (``!`` to ``~``): a header carries them as bytes, and only for
    these characters do every client, proxy and endpoint agree on what the bytes are. The
    one rule for keys in the project file and in ``HYBRIDSERVE_API_KEYS``; never echoes
    the key.
    """
    if not key:
        return "expected a non-empty key"
    if not all("!" <= c <= "~" for c in key):
        return "expected visible ASCII characters only (no spaces, no non-ASCII)"
    return None


class ApiKeyConfig(_Strict):
    name: str
    sha256: str | None = None
    """Hex sha256 of the key (preferred: the file then holds no secret)."""
    key: str | None = None
    """The key itself (better given as ``HYBRIDSERVE_API_KEYS``)."""
    scopes: list[Literal["predict", "ingest", "read", "admin"]] = ["predict"]
    """``read``: the dashboard's data; ``admin`` includes ``read``."""

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not _SHA256_HEX.fullmatch(value):
            # Not echoed: it may be the key itself, pasted into the wrong field.
            got = "non-hex characters" if len(value) == 64 else f"{len(value)} characters"
            raise ValueError(
                f"api key {info.data.get('name')!r}: expected 64 hex digits (the key's "
                f"sha256, as 'sha256sum' prints it), got {got}"
            )
        return value.lower()

    @field_validator("key")
    @classmethod
    def _usable_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        problem = None if value is None else api_key_problem(value)
        if problem:
            raise ValueError(f"api key {info.data.get('name')!r}: {problem}")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ApiKeyConfig:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of 'sha256' or 'key'")
        return self


class AdmissionConfig(_Strict):
    """When a predict request is shed at the door with a 503 (``routing/admission.py``)."""

    max_in_flight: int = Field(default=1024, gt=0)
    """Most predict requests one server process works on at once. Below it, the process
    keeps its own limit, lowered while more than a quarter of the answers take longer than
    their route's ``latency_budget`` and raised while they do not."""
    max_wait: float = Field(default=0.75, gt=0, le=1)
    """A request that has already waited longer than this share of its route's
    ``latency_budget`` for the event loop is shed instead of answered late."""


class ServerConfig(_Strict):
    max_body_size: Size = 1024 * 1024
    max_entities: int = Field(default=1000, gt=0)
    l1_cache_size: int = Field(default=100_000, ge=0)
    max_batch_size: int = Field(default=64, gt=0)
    reload_interval: Duration = 0.5
    """How often servers ask the registry whether an alias moved (0: never)."""
    shutdown_timeout: Duration = 10.0
    shadow_queue: int = Field(default=1000, ge=1)
    model_execution: Literal["auto", "thread", "inline"] = "auto"
    """Where model calls run: ``thread`` (off the event loop), ``inline`` (on it), or
    ``auto``: inline when a full batch takes less than ``inline_below`` at start-up (the
    fastest of 11 timed batches; the choice and the timings are logged)."""
    inline_below: Duration = 0.010
    model_threads: int | None = Field(default=1, ge=1)
    """Threads one model call may use (OpenMP and BLAS pools; ``null``: the libraries' own
    default, one per core). Online batches are small: measured on 2 busy cores, a 64-row
    batch of the example's gradient boosting took 0.7 ms on one thread and a median of 1.2 to
    36 ms with OpenMP's two, whose threads spin against the event loop."""
    body_timeout: Duration = Field(default=10.0, gt=0)
    """Longest time a client may take to send a request body (408 after it)."""
    breaker: BreakerConfig = BreakerConfig()
    admission: AdmissionConfig = AdmissionConfig()
    api_keys: list[ApiKeyConfig] = []


class PredictionLogConfig(_Strict):
    """Where and how the prediction log is written (``quality/log.py``)."""

    url: str | None = None
    """``parquet:///DIR`` (rotated Parquet files; relative to the project directory),
    ``redis://host:port/db`` (one trimmed stream per route) or ``memory://``. Default: a
    Redis stream on the prediction store when that is Redis, else
    ``parquet:///.hybridserve/prediction-log``."""
    queue: int = Field(default=10_000, gt=0)
    """Records waiting for the writer; past this, new ones are dropped and counted."""
    batch_rows: int = Field(default=1000, gt=0)
    flush_interval: Duration = 1.0
    """How long the writer waits to fill a batch."""
    rotate_rows: int = Field(default=100_000, gt=0)
    rotate_interval: Duration = 60.0
    """A Parquet file is closed (and readable) after this long or ``rotate_rows`` records."""
    retention: Duration = 7 * 86400.0
    """Parquet files older than this are deleted when a new one is closed."""
    maxlen: int = Field(default=1_000_000, gt=0)
    """Redis: approximate entries kept per route's stream."""


class TracingConfig(_Strict):
    """OpenTelemetry tracing (extra ``otel``); also on when ``OTEL_TRACES_EXPORTER`` or an
    ``OTEL_EXPORTER_OTLP_*ENDPOINT`` is set. See ``observability/tracing.py``."""

    enabled: bool = False
    sample_ratio: float | None = Field(default=None, ge=0, le=1)
    """Share of new traces sampled (a sampled caller's trace is always continued); default the
    SDK's (``OTEL_TRACES_SAMPLER``, else every trace)."""


class Project(_Strict):
    """A loaded, validated project file."""

    name: str = "hybridserve"
    registry: RegistryConfig = RegistryConfig()
    stores: StoresConfig = StoresConfig()
    entities: dict[str, EntityConfig] = {}
    feature_views: dict[str, FeatureViewConfig] = {}
    models: dict[str, ModelConfig] = {}
    routes: dict[str, RouteConfig] = {}
    batch_jobs: dict[str, BatchJobConfig] = {}
    streams: dict[str, StreamConfig] = {}
    server: ServerConfig = ServerConfig()
    prediction_log: PredictionLogConfig = PredictionLogConfig()
    tracing: TracingConfig = TracingConfig()
    health: HealthConfig = HealthConfig()
    cost: CostConfig = CostConfig()
    base_dir: Path = Path(".")
    """Directory of the project file; relative paths resolve against it."""
    _route_features: dict[str, dict[str, list[str]]] = PrivateAttr(default_factory=dict)
    source_file: Path | None = None

    @model_validator(mode="after")
    def _cross_references(self) -> Project:
        errors: list[str] = []
        for name, view in self.feature_views.items():
            if view.entity not in self.entities:
                errors.append(f"feature_views.{name}.entity: unknown entity {view.entity!r}")
        for name, route in self.routes.items():
            errors.extend(self._route_errors(name, route))
        for name, job in self.batch_jobs.items():
            if job.route not in self.routes:
                errors.append(f"batch_jobs.{name}.route: unknown route {job.route!r}")
            if job.input.view is not None and job.input.view not in self.feature_views:
                errors.append(
                    f"batch_jobs.{name}.input.view: unknown feature view {job.input.view!r}"
                )
        for name, stream in self.streams.items():
            errors.extend(self._stream_errors(name, stream))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def _route_errors(self, name: str, route: RouteConfig) -> list[str]:
        errors: list[str] = []
        if route.entity not in self.entities:
            errors.append(f"routes.{name}.entity: unknown entity {route.entity!r}")
        for i, ref in enumerate(route.features):
            view_name, _, feature = ref.partition(":")
            found = self.feature_views.get(view_name)
            if found is None:
                errors.append(f"routes.{name}.features.{i}: unknown feature view {view_name!r}")
            elif feature and feature not in found.features:
                errors.append(
                    f"routes.{name}.features.{i}: view {view_name!r} has no feature {feature!r}"
                )
            elif found.entity != route.entity:
                errors.append(
                    f"routes.{name}.features.{i}: view {view_name!r} is keyed by "
                    f"{found.entity!r}, the route by {route.entity!r}"
                )
        if route.review is not None:
            errors.extend(self._review_errors(name, route.review))
        return errors

    def _review_errors(self, name: str, review: ReviewConfig) -> list[str]:
        where = f"routes.{name}.review"
        known: set[str] = set()
        for ref in self.routes[name].features:
            view_name, _, feature = ref.partition(":")
            view = self.feature_views.get(view_name)
            known.update([feature] if feature else view.features if view else ())
        errors = [
            f"{where}.critical_features: {f!r} is not one of the route's features"
            for f in review.critical_features
            if f not in known
        ]
        if "missing_critical_features" in review.when and not review.critical_features:
            errors.append(f"{where}.critical_features: 'missing_critical_features' needs some")
        return errors

    def _stream_errors(self, name: str, stream: StreamConfig) -> list[str]:
        errors: list[str] = []
        if stream.entity not in self.entities:
            errors.append(f"streams.{name}.entity: unknown entity {stream.entity!r}")
        if stream.route is not None and stream.route not in self.routes:
            errors.append(f"streams.{name}.route: unknown route {stream.route!r}")
        if stream.windows is None:
            return errors
        wview = self.feature_views.get(stream.windows.view)
        if wview is None:
            errors.append(
                f"streams.{name}.windows.view: unknown feature view {stream.windows.view!r}"
            )
            return errors
        for feat, spec in stream.windows.features.items():
            if feat not in wview.features:
                errors.append(
                    f"streams.{name}.windows.features.{feat}: not a feature "
                    f"of view {stream.windows.view!r}"
                )
            if spec.agg != "count" and spec.field not in stream.fields:
                errors.append(
                    f"streams.{name}.windows.features.{feat}.field: "
                    f"expected one of the stream's fields, got {spec.field!r}"
                )
        return errors

    def path(self, relative: str | Path) -> Path:
        """Resolve a path from the project file against the file's directory."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def url(self, url: str) -> str:
        """Resolve a relative ``sqlite:///`` URL against the project directory."""
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url.removeprefix("sqlite:///")
            if rel and rel != ":memory:":
                return "sqlite:///" + str(self.path(rel).resolve())
        return url

    def route(self, name: str) -> RouteConfig:
        try:
            return self.routes[name]
        except KeyError:
            raise RouteNotFound(
                f"unknown route {name!r}; known routes: {sorted(self.routes) or 'none'}",
                route=name,
            ) from None

    def view(self, name: str) -> FeatureViewConfig:
        try:
            return self.feature_views[name]
        except KeyError:
            raise FeatureViewNotFound(
                f"unknown feature view {name!r}; "
                f"known views: {sorted(self.feature_views) or 'none'}",
                view=name,
            ) from None

    def route_features(self, route: str) -> dict[str, list[str]]:
        """View name -> the feature names the route reads from it, in declaration order.

        Computed once per route (the hot path asks on every request); do not mutate it.
        """
        cached = self._route_features.get(route)
        if cached is not None:
            return cached
        wanted: dict[str, list[str]] = {}
        for ref in self.route(route).features:
            view_name, _, feature = ref.partition(":")
            names = wanted.setdefault(view_name, [])
            for f in [feature] if feature else list(self.feature_views[view_name].features):
                if f not in names:
                    names.append(f)
        self._route_features[route] = wanted
        return wanted

    def feature_spec(self, route: str, feature: str) -> FeatureSpec | None:
        """The spec of a feature as a route sees it (request features are typed by the route)."""
        r = self.route(route)
        if feature in r.request_features:
            return FeatureSpec(dtype=r.request_features[feature])
        for view_name, names in self.route_features(route).items():
            if feature in names:
                return self.feature_views[view_name].features[feature]
        return None


class EnvOverrides(BaseSettings):
    """``HYBRIDSERVE_*`` environment variables; they win over the project file."""

    model_config = SettingsConfigDict(env_prefix="HYBRIDSERVE_", extra="ignore")

    registry_url: str | None = None
    artifacts_dir: str | None = None
    online_store_url: str | None = None
    prediction_store_url: str | None = None
    store_prefix: str | None = None


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # Union members show up as loc parts named after the class; drop them.
        loc = ".".join(
            p for p in loc.split(".") if not p[:1].isupper() and p not in ("list", "dict")
        )
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in {
            "literal_error",
            "string_type",
            "float_parsing",
            "int_parsing",
            "dict_type",
            "list_type",
            "bool_parsing",
            "float_type",
            "int_type",
            "model_type",
        }:
            msg = f"{msg}, got {err.get('input')!r}"
        for part in msg.split("\n"):
            lines.append(
                f"{source}: {loc}: {part}"
                if loc and not part.startswith(("routes.", "feature_views."))
                else f"{source}: {part}"
            )
    # Several union members can report the same problem; keep each line once.
    return "\n".join(dict.fromkeys(lines))


def find_project_file(path: str | Path | None = None) -> Path:
    """The project file: ``path``, else ``$HYBRIDSERVE_PROJECT``, else ``./hybridserve.yaml``."""
    candidate = Path(path or os.environ.get("HYBRIDSERVE_PROJECT") or DEFAULT_FILENAME)
    if candidate.is_dir():
        candidate = candidate / DEFAULT_FILENAME
    if not candidate.exists():
        raise ConfigError(
            f"{candidate}: project file not found (create one with 'hybridserve init', "
            "or pass --project PATH)"
        )
    return candidate


def load_project(path: str | Path | None = None, *, env: bool = True) -> Project:
    """Load and validate a project file; raise :class:`ConfigError` with every problem found."""
    file = find_project_file(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{file}{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level, got {type(raw).__name__}")
    if env:
        raw = _apply_env(raw, EnvOverrides())
    raw = {**raw, "base_dir": file.parent.resolve(), "source_file": file.resolve()}
    try:
        return Project.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(str(file), exc)) from None


def project_from_dict(raw: dict[str, Any], base_dir: Path | str = ".") -> Project:
    """Build a project from a mapping (tests, embedding); same validation as a file."""
    try:
        return Project.model_validate({**raw, "base_dir": Path(base_dir).resolve()})
    except ValidationError as exc:
        raise ConfigError(_format_errors("<project>", exc)) from None


def _apply_env(raw: dict[str, Any], env: EnvOverrides) -> dict[str, Any]:
    raw = dict(raw)
    registry = dict(raw.get("registry") or {})
    stores = dict(raw.get("stores") or {})
    if env.registry_url:
        registry["url"] = env.registry_url
    if env.artifacts_dir:
        registry["artifacts"] = env.artifacts_dir
    if env.online_store_url:
        stores["online"] = env.online_store_url
    if env.prediction_store_url:
        stores["predictions"] = env.prediction_store_url
    if env.store_prefix:
        stores["prefix"] = env.store_prefix
    if registry:
        raw["registry"] = registry
    if stores:
        raw["stores"] = stores
    return raw
