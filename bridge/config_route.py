"""``routes/<name>.toml``: one route's settings (source, endpoint, batching, results,
failures), each section a frozen model whose validators hold the rules within it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge import topics
from bridge.config_section import Section


def _topic(name: str) -> str:
    # Kept as written (the client takes every form); comparisons normalise (bridge.topics).
    topics.parse(name)
    return name


TopicField = Annotated[str, AfterValidator(_topic)]

SubscriptionType = Literal["shared", "key_shared", "failover", "exclusive"]
RequestFormat = Literal["dataframe_records", "dataframe_split", "instances", "inputs"]


class SourceSettings(Section):
    # Declared before `topics`, whose validator reads it. A non-persistent topic keeps
    # nothing for a consumer that is not connected or not keeping up: events are lost by
    # design, which a bridge that promises at-least-once must not do unless asked to.
    allow_non_persistent: bool = False
    topics: list[TopicField] = Field(min_length=1)
    subscription: str = Field(min_length=1)
    subscription_type: SubscriptionType = "shared"
    # Earliest, unlike Pulsar's default: a new subscription must not skip events that
    # were published before the bridge first started.
    initial_position: Literal["earliest", "latest"] = "earliest"
    receiver_queue_size: int = Field(default=1000, ge=1)
    # Typed topics (bridge.schemas): "json" (schemaless JSON objects); "avro", "json-schema"
    # or "protobuf" with schema_file (and message_type, a protobuf message's full name);
    # "auto": each message's schema version, read from the broker's registry.
    # (Named schema_kind in code: a field named schema would shadow BaseModel.schema.)
    schema_kind: Literal["json", "avro", "json-schema", "protobuf", "auto"] = Field(
        default="json", alias="schema"
    )
    message_type: str | None = None
    schema_file: str | None = Field(default=None, validate_default=True)

    @field_validator("schema_file")
    @classmethod
    def _schema_file_reads(cls, value: str | None, info: ValidationInfo) -> str | None:
        from bridge.schema_config import source_schema_file  # fastavro, protobuf: when used

        base_dir = (info.context or {}).get("base_dir")
        kind = info.data.get("schema_kind", "json")
        return source_schema_file(kind, value, info.data.get("message_type"), base_dir)

    @field_validator("topics")
    @classmethod
    def _persistent_unless_allowed(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("allow_non_persistent", False):
            return value
        lossy = [t for t in value if not topics.parse(t).persistent]
        if lossy:
            raise ValueError(
                f"{', '.join(map(repr, lossy))}: a non-persistent topic drops events while the "
                "bridge is down or behind; set source.allow_non_persistent = true to accept that"
            )
        return value


class EndpointSettings(Section):
    name: str | None = None
    url: str | None = None
    workspace: str | None = None
    served_model: str | None = None
    format: RequestFormat = "dataframe_records"
    params: dict[str, Any] | None = None
    # A deadline for the whole request, from connecting to the last byte of the answer.
    timeout_s: float = Field(default=120, gt=0)
    # "adaptive": the limit of requests at the endpoint moves between min_in_flight and
    # max_in_flight with the endpoint's answers (429/503/timeouts cut it, success grows it);
    # "fixed": always max_in_flight.
    concurrency: Literal["adaptive", "fixed"] = "adaptive"
    max_in_flight: int = Field(default=4, ge=1, le=256)
    min_in_flight: int = Field(default=1, ge=1, le=256)
    # Optional caps for AI Gateway rate limits, shared by every route calling the endpoint.
    max_requests_per_s: float | None = Field(default=None, gt=0)
    max_events_per_s: float | None = Field(default=None, gt=0)
    # Databricks rejects request bodies over 16 MB; batches are split below this.
    max_payload_bytes: int = Field(default=16_000_000, ge=1024)
    # Answers larger than this (after decompression) fail the request; error bodies are
    # cut well before it.
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Send a fresh client_request_id in each request body, which Databricks inference
    # tables record, so their rows join to results. Off by default: not every scoring
    # server accepts the extra field.
    client_request_id: bool = False

    @model_validator(mode="after")
    def _name_or_url(self) -> EndpointSettings:
        if (self.name is None) == (self.url is None):
            raise ValueError("exactly one of 'name' or 'url' is required")
        if self.min_in_flight > self.max_in_flight:
            raise ValueError(
                f"min_in_flight ({self.min_in_flight}) is above max_in_flight "
                f"({self.max_in_flight})"
            )
        if self.url is not None and self.workspace is not None:
            raise ValueError("'workspace' applies to 'name' endpoints only")
        return self


class BatchSettings(Section):
    max_events: int = Field(default=100, ge=1)
    max_bytes: int = Field(default=4_000_000, ge=1)
    linger_ms: float = Field(default=20, ge=0)


class ResultSettings(Section):
    topic: TopicField
    # Mutable defaults go through Field: pydantic copies them per instance, but ruff cannot
    # tell that a Section is a pydantic model (its base is imported).
    passthrough: list[str] = Field(default=[])
    # "effectively-once": Apache Pulsar's deduplication drops results stored before (a
    # crash, a restart, a redelivery); needs one owner per source partition (failover or
    # exclusive), pulsar.admin_url and deduplication enabled for the result topic.
    delivery: Literal["at-least-once", "effectively-once"] = "at-least-once"
    # Typed results (bridge.result_schema): "none" (schemaless JSON), or "avro" or
    # "json-schema" with a record schema derived from prediction_type (an Avro type) and
    # the passthrough fields' types (from the source schema, or passthrough_types),
    # registered on the topic.
    schema_kind: Literal["none", "json-schema", "avro"] = Field(default="none", alias="schema")
    prediction_type: str | dict[str, Any] | list[Any] | None = None
    passthrough_types: dict[str, str | dict[str, Any] | list[Any]] = Field(default={})

    @field_validator("prediction_type")
    @classmethod
    def _avro_prediction_type(cls, value: object) -> object:
        from bridge.schema_config import avro_type

        return None if value is None else avro_type(value)

    @field_validator("passthrough_types")
    @classmethod
    def _avro_passthrough_types(cls, value: dict[str, object]) -> dict[str, object]:
        from bridge.schema_config import avro_type

        return {name: avro_type(declared) for name, declared in value.items()}


class FailureSettings(Section):
    # Rounds of in-bridge attempts a batch may fail alone (a 5xx or timeout while the
    # endpoint answers other requests) before it is split, and a single event dead-lettered.
    max_redeliveries: int = Field(default=5, ge=0)
    dead_letter_topic: TopicField | None = None
    # Delay before Pulsar redelivers a nacked event.
    nack_delay_ms: int = Field(default=1000, ge=0)
    # In-bridge attempts of one request before its events are nacked.
    attempts: int = Field(default=3, ge=1, le=20)
    retry_statuses: list[int] = Field(default=[429, 500, 502, 503, 504])
    backoff_initial_ms: float = Field(default=100, ge=0)
    backoff_max_ms: float = Field(default=5000, ge=0)
    retry_after_max_s: float = Field(default=30, ge=0)
    # Consecutive failed requests that pause the route, and the probe interval cap.
    circuit_failures: int = Field(default=10, ge=1)
    circuit_probe_max_s: float = Field(default=30, gt=0)
    # Batches in a row whose every event the endpoint rejects (400/422) that pause the
    # route as a route error (a model redeployed with a new signature) instead of
    # dead-lettering them; 0 turns it off. Undecided batches wait at most
    # poison_storm_window_s for another batch to tell poison from a storm.
    poison_storm_batches: int = Field(default=3, ge=0)
    poison_storm_window_s: float = Field(default=10, gt=0)

    @field_validator("retry_statuses")
    @classmethod
    def _failure_statuses(cls, value: list[int]) -> list[int]:
        reasons = [
            f"{status} {_not_retriable(status)}" for status in value if _not_retriable(status)
        ]
        if reasons:
            raise ValueError("; ".join(reasons))
        return value

    # A field validator (not a model one), so it runs even when another key is wrong.
    @field_validator("backoff_max_ms")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial_ms")
        if initial is not None and initial > value:
            raise ValueError(
                f"{value:g} is below backoff_initial_ms ({initial:g}): the first wait would "
                "exceed the cap"
            )
        return value


# The endpoint's verdict on the events themselves: the batch is bisected and the offending
# events dead-lettered; retrying the same request would only get the same answer. Kept
# equal to the set the batch processor acts on (a test compares them).
EVENT_ERROR_STATUSES = frozenset({400, 413, 422})


def _not_retriable(status: int) -> str:
    """Why ``status`` cannot be a retry status, or "" when it can."""
    if 200 <= status < 400:
        return "is not a failure (2xx/3xx)"
    if status in EVENT_ERROR_STATUSES:
        return "is an event error: its batch is split and the bad events dead-lettered"
    if not 400 <= status < 600:
        return "is not an HTTP error status (4xx/5xx)"
    return ""


class RouteSettings(BaseModel):
    """One ``routes/<name>.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    file: str
    source: SourceSettings
    endpoint: EndpointSettings
    batch: BatchSettings = BatchSettings()
    result: ResultSettings
    failure: FailureSettings = FailureSettings()

    @model_validator(mode="after")
    def _one_owner_per_partition(self) -> RouteSettings:
        if self.result.delivery == "effectively-once" and self.source.subscription_type not in (
            "failover",
            "exclusive",
        ):
            raise ValueError(
                "result.delivery = 'effectively-once' needs source.subscription_type "
                "'failover' or 'exclusive': one owner per source partition publishes its "
                f"results in source order (got {self.source.subscription_type!r})"
            )
        return self

    @field_validator("result")
    @classmethod
    def _result_schema_derives(cls, value: ResultSettings, info: ValidationInfo) -> ResultSettings:
        from bridge.schema_config import check_result

        source = info.data.get("source")
        if isinstance(source, SourceSettings):
            check_result(
                info.data.get("name", "route"),
                source,
                kind=value.schema_kind,
                prediction_type=value.prediction_type,
                passthrough=value.passthrough,
                declared=value.passthrough_types,
            )
        return value

    @property
    def effectively_once(self) -> bool:
        return self.result.delivery == "effectively-once"

    @property
    def dead_letter_topic(self) -> str:
        """The configured DLQ, or Pulsar's conventional ``<topic>-<subscription>-DLQ``."""
        if self.failure.dead_letter_topic is not None:
            return self.failure.dead_letter_topic
        return topics.default_dead_letter_topic(self.source.topics[0], self.source.subscription)
