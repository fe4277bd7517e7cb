"""pulsar-bridge tail: print the last messages of a topic, and with --follow the new ones.

Meant for result and dead-letter topics: each message is shown with its key, its
properties (a dead letter's error, route, source topic and message id) and its payload.
It reads with a non-durable reader: no subscription is created or left behind on Apache
Pulsar, and no message is acknowledged on any subscription. To find the last --limit
messages it reads the topic from its first message, so on a long topic it takes a while
before the first line appears.

Messages of a typed topic (one with a schema in the broker's registry: Avro, JSON schema,
protobuf) are shown decoded, with their schema's type and version; the registry is read
through ``[pulsar] admin_url`` when set, else over the binary protocol. pulsar-lite keeps
no schemas and stamps no versions, so there its typed payloads show as bytes.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.config import Config
from bridge.errors import BrokerError
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_source import Position, Received, TopicReader
from bridge.schema_config import from_topic_schema
from bridge.schema_protobuf import ProtobufRecord
from bridge.schema_registry import SchemaRegistry, registry_for
from bridge.schemas import AvroRecord, Decoder, SchemaProblem, Undecodable
from bridge.tools import count

# How long one wait for a new message lasts with --follow, so Ctrl-C is noticed.
FOLLOW_POLL_MS = 500
# Messages read per call into the client (one worker-thread hop each).
READ_BATCH = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", required=True, help="the topic to read")
    parser.add_argument(
        "--limit", type=count, default=10, metavar="N", help="print the last N (default 10)"
    )
    parser.add_argument(
        "--follow", action="store_true", help="then print new messages until Ctrl-C"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per message")


@dataclass(frozen=True)
class Typed:
    """A message's payload decoded with its schema (or why it did not decode)."""

    schema: str  # "AVRO v1"
    value: Any = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"schema": self.schema, "decode_error": self.error}
        return {"schema": self.schema, "value": self.value}


class TypedPayloads:
    """Decodes messages that carry a schema version, with the topic's registered schemas."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self._registry = registry
        self._decoders: dict[tuple[str, int], tuple[str, Decoder | str]] = {}

    async def decode(self, message: Received) -> Typed | None:
        """None for a message without a schema version (untyped, or from pulsar-lite)."""
        version = message.schema_version
        if version < 0:
            return None
        key = (message.topic, version)
        if key not in self._decoders:
            self._decoders[key] = await self._decoder(message.topic, version)
        schema, decoder = self._decoders[key]
        if isinstance(decoder, str):
            return Typed(schema, error=decoder)
        try:
            return Typed(schema, decoder(message.data))
        except (Undecodable, orjson.JSONDecodeError) as exc:
            return Typed(schema, error=str(exc))

    async def _decoder(self, topic: str, version: int) -> tuple[str, Decoder | str]:
        try:
            found = await self._registry.fetch(topic, version)
        except BrokerError as exc:
            return f"v{version}", str(exc)
        if found is None:
            return f"v{version}", "not in the broker's schema registry"
        label = f"{found.type} v{version}"
        try:
            schema = None if found.type in ("JSON", "STRING") else from_topic_schema(found)
        except SchemaProblem as exc:
            return label, str(exc)
        if isinstance(schema, AvroRecord):
            return label, schema.decoder()
        if isinstance(schema, ProtobufRecord):
            return label, schema.decode
        return label, orjson.loads


def as_json(message: Received, typed: Typed | None = None) -> dict[str, Any]:
    """One message as a JSON object; the payload as text, or base64 when it is not UTF-8;
    a typed message's value decoded as well."""
    shown: dict[str, Any] = {
        "topic": message.topic,
        "message_id": message.message_id,
        "publish_time": _iso(message.publish_time_ms),
        "key": message.key,
        "properties": dict(sorted(message.properties.items())),
    }
    try:
        shown["payload"] = message.data.decode("utf-8")
    except UnicodeDecodeError:
        shown["payload_base64"] = base64.b64encode(message.data).decode()
    if typed is not None:
        shown.update(typed.as_json())
    return shown


def as_text(message: Received, typed: Typed | None = None) -> str:
    """One message for a person: a header line, one line per property, the payload."""
    lines = [f"{_iso(message.publish_time_ms)}  {message.message_id}  key={message.key or '-'}"]
    lines += [f"  {name}={value}" for name, value in sorted(message.properties.items())]
    if typed is not None:
        shown = typed.value if typed.error is None else f"not decoded: {typed.error}"
        text = orjson.dumps(shown).decode() if typed.error is None else shown
        lines.append(f"  [{typed.schema}] {text}")
        return "\n".join(lines)
    try:
        lines.append(f"  {message.data.decode('utf-8')}")
    except UnicodeDecodeError:
        lines.append(f"  {message.data!r}")
    return "\n".join(lines)


def _iso(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FirstSight:
    """Whether a message is new to this reader.

    pulsar-lite can hand a reader the same message twice over a long backlog; positions
    only grow within a partition, so one seen before is one at or below the last.
    """

    def __init__(self) -> None:
        self._last: dict[int, Position] = {}

    def __call__(self, message: Received) -> bool:
        position = message.position
        last = self._last.get(position.partition)
        if last is not None and position <= last:
            return False
        self._last[position.partition] = position
        return True


async def run(config: Config, args: argparse.Namespace) -> int:
    connection = PulsarConnection(config.bridge.pulsar)
    try:
        reader = await connection.reader(args.topic)
        try:
            await _tail(reader, args, TypedPayloads(registry_for(connection)))
        finally:
            await reader.close()
    finally:
        await connection.close()
    return 0


async def _tail(reader: TopicReader, args: argparse.Namespace, typed: TypedPayloads) -> None:
    new = FirstSight()
    last: deque[Received] = deque(maxlen=args.limit)
    while batch := await reader.read_available(READ_BATCH):
        last.extend(message for message in batch if new(message))
    for message in last:
        _show(message, args.json, await typed.decode(message))
    while args.follow:
        arrived = await reader.read(FOLLOW_POLL_MS)
        if arrived is not None and new(arrived):
            _show(arrived, args.json, await typed.decode(arrived))


def _show(message: Received, as_json_lines: bool, typed: Typed | None) -> None:
    if as_json_lines:
        print(orjson.dumps(as_json(message, typed)).decode(), flush=True)
    else:
        print(as_text(message, typed), flush=True)
