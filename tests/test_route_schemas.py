"""A route's decoding by writer schema version, with a fake registry and a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from bridge.config_route import RouteSettings
from bridge.errors import BrokerError, SchemaError
from bridge.events import BadEvent
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_source import Received
from bridge.route_schemas import LOOKUP_RETRY_S, RouteSchemas, SchemaUnavailable
from bridge.schemas import TopicSchema
from tests.support.clock import FakeClock
from tests.support.schemas import TX_V1, TX_V2, avro_bytes, write_json

TOPIC = "persistent://public/default/tx"


class FakeReceived:
    def __init__(self, data: bytes, version: int = -1, topic: str = TOPIC) -> None:
        self.data = data
        self.schema_version = version
        self.topic = topic
        self.key = None
        self.message_id = "(1,1,-1,0)"


def received(data: bytes, version: int = -1, topic: str = TOPIC) -> Received:
    return cast(Received, FakeReceived(data, version, topic))


class FakeRegistry:
    """Versions of one topic's schema; ``down`` makes every lookup fail."""

    def __init__(self, *versions: TopicSchema) -> None:
        self.versions = list(versions)
        self.down = False
        self.asked: list[tuple[str, int | None]] = []
        self.registered: list[tuple[str, TopicSchema]] = []

    async def fetch(self, topic: str, version: int | None = None) -> TopicSchema | None:
        self.asked.append((topic, version))
        if self.down:
            raise BrokerError("admin API unreachable")
        if not self.versions:
            return None
        if version is None:
            return self.versions[-1]
        return self.versions[version] if version < len(self.versions) else None

    async def register(self, topic: str, schema: TopicSchema) -> int | None:
        self.registered.append((topic, schema))
        return 0


def avro(definition: dict[str, Any], version: int) -> TopicSchema:
    return TopicSchema("AVRO", json.dumps(definition), version)


def route(
    tmp_path: Path, source: dict[str, Any], result: dict[str, Any] | None = None
) -> RouteSettings:
    data = {
        "name": "fraud",
        "file": str(tmp_path / "fraud.toml"),
        "source": {"topics": [TOPIC], "subscription": "s", **source},
        "endpoint": {"url": "http://127.0.0.1:1/invocations"},
        "result": {"topic": "persistent://public/default/out", **(result or {})},
    }
    return RouteSettings.model_validate(data, context={"base_dir": tmp_path})


async def opened(
    settings: RouteSettings, registry: FakeRegistry, clock: FakeClock | None = None
) -> RouteSchemas:
    return await RouteSchemas.open(
        settings,
        cast(PulsarConnection, None),
        registry=registry,
        clock=clock or FakeClock(),
    )


async def test_auto_decodes_each_version_with_its_own_writer_schema(tmp_path: Path) -> None:
    registry = FakeRegistry(avro(TX_V1, 0), avro(TX_V2, 1))
    schemas = await opened(route(tmp_path, {"schema": "auto"}), registry)
    v1 = received(avro_bytes(TX_V1, {"id": "a", "amount": 1.0}), version=0)
    v2 = received(avro_bytes(TX_V2, {"id": "b", "amount": 2.0, "country": "DE"}), version=1)
    with pytest.raises(SchemaUnavailable):
        schemas.decode(v2)  # a version not seen yet is looked up before decoding
    await schemas.prepare([v1, v2, v2])
    assert schemas.decode(v1).row == {"id": "a", "amount": 1.0}
    assert schemas.decode(v2).row == {"id": "b", "amount": 2.0, "country": "DE"}
    assert registry.asked == [(TOPIC, None), (TOPIC, 0), (TOPIC, 1)]
    await schemas.prepare([v1, v2])
    assert len(registry.asked) == 3  # each version once
    # No version on the message: the topic's latest schema at route start.
    unversioned = received(avro_bytes(TX_V2, {"id": "c", "amount": 3.0, "country": "FR"}))
    assert schemas.decode(unversioned).row["country"] == "FR"


async def test_a_schema_file_is_the_shape_every_version_is_read_into(tmp_path: Path) -> None:
    write_json(tmp_path / "tx.avsc", TX_V2)
    registry = FakeRegistry(avro(TX_V1, 0), avro(TX_V2, 1))
    settings = route(tmp_path, {"schema": "avro", "schema_file": "tx.avsc"})
    schemas = await opened(settings, registry)
    assert registry.asked == []  # nothing to read at start: the file is the route's schema
    old = received(avro_bytes(TX_V1, {"id": "a", "amount": 1.0}), version=0)
    await schemas.prepare([old])
    assert schemas.decode(old).row == {"id": "a", "amount": 1.0, "country": "NL"}
    # pulsar-lite: no versions, the file's schema is the writer's.
    plain = received(avro_bytes(TX_V2, {"id": "b", "amount": 2.0, "country": "SE"}))
    assert schemas.decode(plain).row["country"] == "SE"


async def test_undecodable_events_are_bad_events_naming_the_schema_version(tmp_path: Path) -> None:
    registry = FakeRegistry(avro(TX_V1, 0))
    schemas = await opened(route(tmp_path, {"schema": "auto"}), registry)
    garbage, missing = received(b"\x02", version=0), received(b"", version=7)
    await schemas.prepare([garbage, missing])
    with pytest.raises(BadEvent, match=rf"payload is not Avro of schema version 0 of {TOPIC}"):
        schemas.decode(garbage)
    with pytest.raises(BadEvent, match=r"schema version 7 of .* is not in the broker's"):
        schemas.decode(missing)


async def test_a_registry_that_cannot_answer_hands_events_back_and_is_asked_later(
    tmp_path: Path,
) -> None:
    registry, clock = FakeRegistry(avro(TX_V1, 0), avro(TX_V2, 1)), FakeClock()
    schemas = await opened(route(tmp_path, {"schema": "auto"}), registry, clock)
    message = received(avro_bytes(TX_V2, {"id": "b", "amount": 2.0, "country": "DE"}), 1)
    registry.down = True
    await schemas.prepare([message])
    with pytest.raises(SchemaUnavailable):
        schemas.decode(message)
    asked = len(registry.asked)
    registry.down = False
    await schemas.prepare([message])
    assert len(registry.asked) == asked  # not before LOOKUP_RETRY_S
    clock.advance(LOOKUP_RETRY_S)
    await schemas.prepare([message])
    assert schemas.decode(message).row["country"] == "DE"


class FlakyRegistry(FakeRegistry):
    """Cannot answer about a version ``failures`` times (None: ever); ``on_failure`` is
    told each failure's count."""

    def __init__(
        self,
        *versions: TopicSchema,
        failures: int | None,
        on_failure: Callable[[int], None] = lambda count: None,
    ) -> None:
        super().__init__(*versions)
        self.failures, self.failed, self.on_failure = failures, 0, on_failure

    async def fetch(self, topic: str, version: int | None = None) -> TopicSchema | None:
        self.down = version is not None and (self.failures is None or self.failed < self.failures)
        if self.down:
            self.failed += 1
            self.on_failure(self.failed)
        return await super().fetch(topic, version)

    @property
    def versions_asked(self) -> list[int]:
        return [version for _, version in self.asked if version is not None]


def tx_v2_message() -> Received:
    return received(avro_bytes(TX_V2, {"id": "b", "amount": 2.0, "country": "DE"}), 1)


async def test_a_hold_waits_in_place_until_the_registry_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Effectively-once: handing the event back would halt its partition's line.
    monkeypatch.setattr("bridge.route_schemas.LOOKUP_RETRY_S", 0.0)
    registry = FlakyRegistry(avro(TX_V1, 0), avro(TX_V2, 1), failures=3)
    schemas = await opened(route(tmp_path, {"schema": "auto"}), registry)
    message = tx_v2_message()
    await schemas.prepare([message], hold=asyncio.Event())
    assert registry.versions_asked == [1, 1, 1, 1], "asked again until it answered"
    assert schemas.decode(message).row["country"] == "DE"


async def test_a_stop_ends_the_hold_and_the_event_is_handed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.route_schemas.LOOKUP_RETRY_S", 0.0)
    stopping = asyncio.Event()

    def stop_at_second_failure(count: int) -> None:
        if count == 2:
            stopping.set()

    registry = FlakyRegistry(
        avro(TX_V1, 0), avro(TX_V2, 1), failures=None, on_failure=stop_at_second_failure
    )
    schemas = await opened(route(tmp_path, {"schema": "auto"}), registry)
    message = tx_v2_message()
    await schemas.prepare([message], hold=stopping)
    assert registry.versions_asked == [1, 1], "no lookup after the stop"
    with pytest.raises(SchemaUnavailable):
        schemas.decode(message)


async def test_json_schema_sources_check_required_fields(tmp_path: Path) -> None:
    write_json(tmp_path / "tx.json", TX_V1)
    settings = route(tmp_path, {"schema": "json-schema", "schema_file": "tx.json"})
    schemas = await opened(settings, FakeRegistry())
    assert schemas.decode(received(b'{"id": "a", "amount": 1}')).row["amount"] == 1
    with pytest.raises(BadEvent, match="lacks field"):
        schemas.decode(received(b'{"id": "a"}', version=3))


async def test_auto_on_a_topic_without_a_schema_reads_json(tmp_path: Path) -> None:
    schemas = await opened(route(tmp_path, {"schema": "auto"}), FakeRegistry())
    assert schemas.decode(received(b'{"id": "a"}')).row == {"id": "a"}


async def test_a_registered_schema_the_bridge_cannot_decode_fails_the_start(
    tmp_path: Path,
) -> None:
    registry = FakeRegistry(TopicSchema("KEY_VALUE", "{}", 0))
    with pytest.raises(SchemaError, match="KEY_VALUE is not one the bridge decodes"):
        await opened(route(tmp_path, {"schema": "auto"}), registry)


async def test_the_result_schema_takes_passthrough_types_from_the_topic(tmp_path: Path) -> None:
    registry = FakeRegistry(avro(TX_V2, 0))
    result = {"schema": "avro", "prediction_type": "double", "passthrough": ["id", "country"]}
    schemas = await opened(route(tmp_path, {"schema": "auto"}, result), registry)
    assert schemas.result_schema is not None
    kind, definition = schemas.result_schema
    assert kind == "AVRO"
    assert [f["type"] for f in json.loads(definition)["fields"]] == [
        "double",
        ["null", "string"],
        ["null", "string"],
    ]
    assert registry.registered == [
        ("persistent://public/default/out", TopicSchema(kind, definition))
    ]


def test_json_routes_need_no_registry_and_decode_as_before(tmp_path: Path) -> None:
    schemas = RouteSchemas()
    assert schemas.result_schema is None
    assert schemas.decode(received(b'{"a": 1}')).row == {"a": 1}
