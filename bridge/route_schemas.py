"""A route's typed topics while it runs: events decoded by writer schema, results encoded.

:class:`RouteSchemas` is what the relay asks: ``decode`` turns a received message into an
:class:`~bridge.events.Event` (or says why it cannot: :class:`~bridge.events.BadEvent`,
dead-lettered with the reason); ``prepare`` fetches, before a turn's messages are decoded,
the writer schema of any version a message names that the route has not seen, so a new
producer schema mid-stream is decoded without a restart; ``result_message`` builds
results in the result topic's schema. A schema version the registry cannot be asked about
right now is nobody's fault: its events are handed back (:class:`SchemaUnavailable`) and
the lookup is tried again after ``LOOKUP_RETRY_S``; on an effectively-once route, where a
nack would halt the partition's line, ``prepare`` holds them in place instead (``hold``).

How a version decodes:

* ``avro`` with a schema file: a message's writer schema (by its version) resolved to the
  file's schema, so every event has the file's shape; no version (pulsar-lite, or a
  schemaless producer): the file's schema is the writer's.
* ``auto``: each version decoded with its own schema, whatever its type (AVRO, JSON,
  PROTOBUF_NATIVE); no version: the topic's latest at route start.
* ``json-schema``, ``protobuf`` with a file: JSON and protobuf read any version alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from bridge import topics
from bridge.config_route import RouteSettings
from bridge.errors import BrokerError, SchemaError, ShutdownRequested
from bridge.events import BadEvent, Event, decode, result_message
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_source import Received
from bridge.result_schema import ResultEncoder, derive
from bridge.schema_config import from_topic_schema, load_source_schema
from bridge.schema_protobuf import ProtobufRecord
from bridge.schema_registry import SchemaRegistry, registry_for
from bridge.schemas import (
    AvroRecord,
    JsonRecord,
    SchemaProblem,
    SourceSchema,
    TopicSchema,
    Undecodable,
)
from bridge.stopping import sleep_unless_stopping

log = structlog.get_logger("bridge.schemas")

# Wait before asking the registry again about a version it could not be asked about.
LOOKUP_RETRY_S = 5.0
# Types of a registered schema whose payloads are read as schemaless JSON events.
_UNTYPED = frozenset({"NONE", "BYTES", "STRING"})

EventDecoder = Callable[[Received], Event]
ResultMessage = Callable[..., tuple[bytes, dict[str, str]]]


class SchemaUnavailable(Exception):
    """The message's writer schema could not be looked up now: hand the event back."""


class RouteSchemas:
    """A route's source decoding and result encoding (schemaless JSON by default)."""

    def __init__(
        self,
        source: TypedSource | None = None,
        result: ResultEncoder | None = None,
    ) -> None:
        self._source = source
        self._result = result
        self.decode: EventDecoder = decode if source is None else source.decode
        self.result_message: ResultMessage = result_message if result is None else result.message

    @property
    def result_schema(self) -> tuple[str, str] | None:
        """(type, definition) the result producer declares; None for schemaless results."""
        if self._result is None:
            return None
        schema = self._result.topic_schema
        return schema.type, schema.definition

    async def prepare(
        self, messages: Sequence[Received], *, hold: asyncio.Event | None = None
    ) -> None:
        """Fetch the writer schemas of versions in ``messages`` not seen before.

        With ``hold`` (the route's stop event), a version the registry cannot answer about
        is asked again every ``LOOKUP_RETRY_S`` until it answers or ``hold`` is set, so
        the messages wait in place instead of being handed back. An effectively-once route
        needs that: a nack halts the partition's line (nothing later may be stored before
        the nacked event), and its redelivery needs a batch slot that the later batches,
        waiting in the line for it, may all hold. Holding the intake keeps source order.
        """
        if self._source is not None:
            await self._source.prepare(messages)
            while hold is not None and not hold.is_set() and self._source.unknown(messages):
                try:
                    await sleep_unless_stopping(LOOKUP_RETRY_S, hold)
                except ShutdownRequested:
                    return  # stopping: decode hands them back
                await self._source.prepare(messages, now=True)

    @classmethod
    async def open(
        cls,
        route: RouteSettings,
        pulsar: PulsarConnection,
        *,
        registry: SchemaRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> RouteSchemas:
        """Read the source schemas ``auto`` needs, derive and register the result schema.

        Raises SchemaError (a topic's schema the bridge cannot use, a refused result
        schema) or BrokerError (the registry cannot be asked).
        """
        source_kind, result_kind = route.source.schema_kind, route.result.schema_kind
        if source_kind == "json" and result_kind == "none":
            return cls()
        registry = registry or registry_for(pulsar)
        source = None
        if source_kind != "json":
            source = TypedSource(route, registry, clock=clock)
            await source.open()
        result = None
        if result_kind != "none":
            fields = {} if source is None else source.field_types()
            try:
                definition = derive(
                    route.name,
                    prediction_type=route.result.prediction_type,
                    passthrough=route.result.passthrough,
                    declared=route.result.passthrough_types,
                    source_fields=fields,
                    kind=result_kind,
                )
            except SchemaProblem as exc:
                raise SchemaError(f"route {route.name}: result schema: {exc}") from exc
            result = ResultEncoder(result_kind, definition)
            version = await registry.register(route.result.topic, result.topic_schema)
            log.info(
                "result_schema",
                route=route.name,
                topic=route.result.topic,
                type=result.topic_schema.type,
                version=version,
            )
        return cls(source, result)


class TypedSource:
    """Decoders of one route's source topics, by (topic, writer schema version)."""

    def __init__(
        self,
        route: RouteSettings,
        registry: SchemaRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._route = route.name
        self._kind = route.source.schema_kind
        self._topics = route.source.topics
        self._registry = registry
        self._clock = clock
        self._declared = load_source_schema(route.source)
        # Only Avro needs each writer's schema; JSON and protobuf read any version alike.
        self._versioned = self._kind in ("avro", "auto")
        self._decoders: dict[tuple[str, int], EventDecoder] = {}
        self._unversioned: dict[str, EventDecoder] = {}
        self._failed_at: dict[tuple[str, int], float] = {}
        self._bases: dict[str, str] = {}
        self._latest: list[SourceSchema] = []
        # Messages without a version, on topics auto found no schema for: plain JSON.
        self._fallback: EventDecoder = decode

    async def open(self) -> None:
        """For ``auto``, read each topic's latest schema (the one unversioned messages use)."""
        if self._kind != "auto":
            assert self._declared is not None or self._kind == "json-schema"
            self._fallback = _event_decoder(self._declared, None, "the route's schema file")
            return
        for topic in self._topics:
            schema = await self._registry.fetch(topic)
            where = f"{topic}'s schema" + ("" if schema is None else f" version {schema.version}")
            try:
                parsed = None if schema is None else _readable(schema)
            except SchemaProblem as exc:
                raise SchemaError(
                    f"route {self._route}: source.schema = auto: {where}: {exc}"
                ) from exc
            if parsed is not None:
                self._latest.append(parsed)
            self._unversioned[self._base(topic)] = _event_decoder(parsed, None, where)
            log.info(
                "source_schema",
                route=self._route,
                topic=topic,
                type="JSON (none registered)" if schema is None else schema.type,
                version=None if schema is None else schema.version,
            )

    def field_types(self) -> dict[str, Any]:
        """What the decoded records hold, for the result schema's passthrough fields."""
        if self._declared is not None:
            return self._declared.field_types()
        fields: dict[str, Any] = {}
        for schema in self._latest:
            for name, field_type in schema.field_types().items():
                fields.setdefault(name, field_type)
        return fields

    def decode(self, received: Received) -> Event:
        version = received.schema_version if self._versioned else -1
        base = self._base(received.topic)
        if version < 0:
            return self._unversioned.get(base, self._fallback)(received)
        decoder = self._decoders.get((base, version))
        if decoder is None:
            raise SchemaUnavailable(f"schema version {version} of {base} not known yet")
        return decoder(received)

    async def prepare(self, messages: Sequence[Received], *, now: bool = False) -> None:
        """Look up versions new to the route (``now``: also those that failed lately)."""
        wanted = {key for key in self.unknown(messages) if now or self._may_ask(key)}
        for key in sorted(wanted):
            await self._look_up(*key)

    def unknown(self, messages: Sequence[Received]) -> set[tuple[str, int]]:
        """(topic, version) of ``messages`` with no decoder yet."""
        if not self._versioned:
            return set()
        keys = {(self._base(r.topic), r.schema_version) for r in messages if r.schema_version >= 0}
        return keys - self._decoders.keys()

    def _may_ask(self, key: tuple[str, int]) -> bool:
        failed = self._failed_at.get(key)
        return failed is None or self._clock() - failed >= LOOKUP_RETRY_S

    async def _look_up(self, topic: str, version: int) -> None:
        try:
            writer = await self._registry.fetch(topic, version)
        except BrokerError as exc:
            self._failed_at[topic, version] = self._clock()
            log.warning("schema_lookup_failed", route=self._route, topic=topic, error=str(exc))
            return
        self._failed_at.pop((topic, version), None)
        where = f"schema version {version} of {topic}"
        self._decoders[topic, version] = self._versioned_decoder(writer, where)
        log.info(
            "schema_version_seen",
            route=self._route,
            topic=topic,
            version=version,
            type=None if writer is None else writer.type,
        )

    def _versioned_decoder(self, writer: TopicSchema | None, where: str) -> EventDecoder:
        if writer is None:
            return _rejecting(f"{where} is not in the broker's schema registry")
        try:
            parsed = _readable(writer)
        except SchemaProblem as exc:
            return _rejecting(f"{where}: {exc}")
        if self._kind == "auto":
            return _event_decoder(parsed, None, where)
        if not isinstance(parsed, AvroRecord):
            return _rejecting(f"{where} is {writer.type}, not the route's Avro")
        return _event_decoder(self._declared, parsed, where)

    def _base(self, topic: str) -> str:
        base = self._bases.get(topic)
        if base is None:
            base = self._bases[topic] = str(topics.parse(topic).base)
        return base


def _readable(schema: TopicSchema) -> SourceSchema | None:
    """The registered schema as the bridge reads it; None: plain JSON events."""
    return None if schema.type in _UNTYPED else from_topic_schema(schema)


def _event_decoder(
    schema: SourceSchema | None, writer: AvroRecord | None, where: str
) -> EventDecoder:
    """Received -> Event for records of ``schema`` (None: schemaless JSON objects).

    ``writer``, for Avro, is the schema a message was written with when it differs from
    ``schema`` (the route's): the record is resolved to the route's shape.
    """
    if schema is None:
        return decode
    if isinstance(schema, JsonRecord):
        return _json_decoder(schema, where)
    if isinstance(schema, AvroRecord):
        read = (writer or schema).decoder(schema if writer is not None else None)
        what = "Avro"
    else:
        assert isinstance(schema, ProtobufRecord)
        read, what = schema.decode, "protobuf"

    def decode_typed(received: Received) -> Event:
        try:
            return Event(received, read(received.data))
        except Undecodable as exc:
            raise BadEvent(f"payload is not {what} of {where}: {exc}") from exc

    return decode_typed


def _json_decoder(schema: JsonRecord, where: str) -> EventDecoder:
    def decode_json(received: Received) -> Event:
        event = decode(received)
        missing = schema.missing(event.row)
        if missing:
            raise BadEvent(f"payload lacks field(s) {', '.join(missing)} that {where} requires")
        return event

    return decode_json


def _rejecting(reason: str) -> EventDecoder:
    def reject(received: Received) -> Event:
        raise BadEvent(reason)

    return reject
