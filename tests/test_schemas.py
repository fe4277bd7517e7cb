"""Typed payloads without a broker: schema files, decoders, result schemas and encoders."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import fastavro
import httpx
import orjson
import pytest

from bridge.events import Event
from bridge.pulsar_source import Received
from bridge.result_schema import ResultDoesNotFit, ResultEncoder, derive, record_name
from bridge.schema_config import from_topic_schema, read_schema_file, source_schema_file
from bridge.schema_protobuf import ProtobufRecord
from bridge.schema_registry import _reason, schema_path
from bridge.schemas import (
    AvroRecord,
    JsonRecord,
    SchemaProblem,
    TopicSchema,
    Undecodable,
)
from tests.support.schemas import (
    TX_V1,
    TX_V2,
    avro_bytes,
    transaction_bytes,
    transaction_descriptor_set,
    write_json,
)
from tests.test_config import BRIDGE, find, load, problems_of, write_config


class FakeReceived:
    def __init__(self, data: bytes = b"{}") -> None:
        self.data = data
        self.key = None
        self.topic = "persistent://public/default/in"
        self.message_id = "(1,2,-1,0)"
        self.schema_version = -1
        self.properties: dict[str, str] = {}


def event(row: dict[str, Any]) -> Event:
    return Event(cast(Received, FakeReceived()), row)


# --------------------------------------------------------------------------- Avro


def test_avro_decodes_pulsar_plain_binary() -> None:
    decode = AvroRecord(TX_V1).decoder()
    assert decode(avro_bytes(TX_V1, {"id": "t1", "amount": 12.5})) == {"id": "t1", "amount": 12.5}


def test_avro_old_writer_resolves_to_the_new_reader_shape() -> None:
    old, new = AvroRecord(TX_V1), AvroRecord(TX_V2)
    row = old.decoder(new)(avro_bytes(TX_V1, {"id": "t1", "amount": 1.0}))
    assert row == {"id": "t1", "amount": 1.0, "country": "NL"}
    # A new writer read by an old reader drops the field it does not know.
    row = new.decoder(old)(avro_bytes(TX_V2, {"id": "t2", "amount": 2.0, "country": "DE"}))
    assert row == {"id": "t2", "amount": 2.0}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "EOFError"),
        (b"\x02a", "EOFError"),  # a string length beyond the payload
        (avro_bytes(TX_V1, {"id": "x", "amount": 1.0}) + b"\x00\x01", r"2 byte\(s\) left over"),
    ],
)
def test_avro_bytes_that_do_not_decode_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(Undecodable, match=reason):
        AvroRecord(TX_V1).decoder()(payload)


def test_avro_values_json_cannot_carry_are_made_plain() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "raw", "type": "bytes"},
            {
                "name": "price",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2},
            },
            {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
        ],
    }
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    record = {
        "raw": b"\x00\xff",
        "price": Decimal("12.34"),
        "ref": "6f1c4c1e-7a57-4b8a-9d76-1c2a3e4f5a6b",
        "at": at,
        "kind": "B",
    }
    avro = AvroRecord(schema)
    row = avro.decoder()(avro_bytes(schema, record))
    assert row == {
        "raw": base64.b64encode(b"\x00\xff").decode(),
        "price": 12.34,
        "ref": "6f1c4c1e-7a57-4b8a-9d76-1c2a3e4f5a6b",
        "at": at,
        "kind": "B",
    }
    orjson.dumps(row)  # the request body can carry it
    assert avro.field_types() == {
        "raw": "string",
        "price": "double",
        "ref": "string",
        "at": {"type": "long", "logicalType": "timestamp-millis"},
        "kind": "string",
    }


@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        ('"string"', "must be a record"),
        ('{"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]}', "nope"),
        ("{not json", "not JSON"),
    ],
)
def test_unusable_avro_schemas_are_refused(definition: str, reason: str) -> None:
    with pytest.raises(SchemaProblem, match=reason):
        AvroRecord.from_text(definition)


# --------------------------------------------------------------------------- JSON, protobuf


def test_json_schema_requires_fields_without_null_or_default() -> None:
    pulsar_form = JsonRecord.from_text(json.dumps(TX_V2))
    assert pulsar_form.required == ("id", "amount")
    assert pulsar_form.missing({"id": "x"}) == ["amount"]
    document = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    assert JsonRecord.from_text(json.dumps(document)).field_types() == {"id": "string"}
    with pytest.raises(SchemaProblem, match="JSON Schema object"):
        JsonRecord.from_text("[]")


def test_protobuf_decodes_every_field_to_plain_values() -> None:
    record = ProtobufRecord(transaction_descriptor_set(), "shop.Transaction")
    row = record.decode(
        transaction_bytes(id="t1", amount=2.5, channel=1, tag=b"\x01", history=[1.0, 2.0])
    )
    assert row == {
        "id": "t1",
        "amount": 2.5,
        "count": 0,  # proto3: absent means the default
        "channel": "STORE",
        "tag": "AQ==",
        "history": [1.0, 2.0],
        "note": None,  # a field with presence, unset
    }
    assert record.field_types() == {
        "id": "string",
        "amount": "double",
        "count": "long",
        "channel": "string",
        "tag": "string",
        "history": {"type": "array", "items": "double"},
        "note": "string",
    }
    with pytest.raises(Undecodable, match=r"not a shop\.Transaction"):
        record.decode(b"\xff\xff\xff")


def test_protobuf_message_type_is_needed_only_when_ambiguous() -> None:
    assert ProtobufRecord(transaction_descriptor_set(), None).descriptor.name == "Transaction"
    with pytest.raises(SchemaProblem, match=r"no message type 'shop\.Nope'"):
        ProtobufRecord(transaction_descriptor_set(), "shop.Nope")
    with pytest.raises(SchemaProblem, match="FileDescriptorSet"):
        ProtobufRecord(b"\xff\xff", None)


def test_registered_schemas_are_read_by_their_pulsar_type() -> None:
    native = {
        "fileDescriptorSet": base64.b64encode(transaction_descriptor_set()).decode(),
        "rootMessageTypeName": "shop.Transaction",
        "rootFileDescriptorName": "transaction.proto",
    }
    assert isinstance(from_topic_schema(TopicSchema("AVRO", json.dumps(TX_V1))), AvroRecord)
    assert isinstance(from_topic_schema(TopicSchema("JSON", json.dumps(TX_V1))), JsonRecord)
    proto = from_topic_schema(TopicSchema("PROTOBUF_NATIVE", json.dumps(native)))
    assert isinstance(proto, ProtobufRecord)
    with pytest.raises(SchemaProblem, match="no field numbers"):
        from_topic_schema(TopicSchema("PROTOBUF", json.dumps(TX_V1)))


# --------------------------------------------------------------------------- schema files


def test_schema_files_resolve_from_the_config_directory(tmp_path: Path) -> None:
    write_json(tmp_path / "tx.avsc", TX_V1)
    (tmp_path / "tx.desc").write_bytes(transaction_descriptor_set())
    assert source_schema_file("avro", "tx.avsc", None, tmp_path) == str(tmp_path / "tx.avsc")
    found = read_schema_file("protobuf", tmp_path / "tx.desc", "shop.Transaction")
    assert isinstance(found, ProtobufRecord)


@pytest.mark.parametrize(
    ("kind", "written", "message_type", "reason"),
    [
        ("avro", None, None, "needs schema_file"),
        ("json", "tx.avsc", None, "takes no schema_file"),
        ("auto", "tx.avsc", None, "takes no schema_file"),
        ("avro", "missing.avsc", None, "cannot read"),
        ("avro", "tx.desc", None, "not UTF-8"),
        ("avro", "tx.avsc", "shop.Transaction", "message_type applies"),
        ("protobuf", "tx.avsc", None, "FileDescriptorSet"),
    ],
)
def test_schema_file_problems_are_named(
    tmp_path: Path, kind: str, written: str | None, message_type: str | None, reason: str
) -> None:
    write_json(tmp_path / "tx.avsc", TX_V1)
    (tmp_path / "tx.desc").write_bytes(b"\xff\xfe" + transaction_descriptor_set())
    with pytest.raises(ValueError, match=reason):
        source_schema_file(kind, written, message_type, tmp_path)


# --------------------------------------------------------------------------- results


def derived(kind: Any = "avro", **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "prediction_type": "double",
        "passthrough": ["id", "country"],
        "declared": {},
        "source_fields": AvroRecord(TX_V2).field_types(),
        "kind": kind,
    }
    return derive("fraud-v2", **{**arguments, **overrides})


def test_result_schema_is_prediction_and_nullable_passthrough_fields() -> None:
    assert derived() == {
        "type": "record",
        "name": "fraud_v2_result",
        "namespace": "pulsar_bridge",
        "fields": [
            {"name": "prediction", "type": "double"},
            {"name": "id", "type": ["null", "string"], "default": None},
            {"name": "country", "type": ["null", "string"], "default": None},
        ],
    }
    declared = derived(declared={"id": "long"}, source_fields={}, passthrough=["id"])
    assert declared["fields"][1]["type"] == ["null", "long"]
    assert record_name("9-lives") == "_9_lives_result"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"source_fields": {}}, "'id' has no type"),
        ({"passthrough": ["prediction"]}, "cannot be named 'prediction'"),
        ({"prediction_type": "decimal128"}, "not valid Avro"),
        ({"declared": {"id": {"type": "record", "name": "X", "fields": []}}}, "is a record"),
    ],
)
def test_result_schema_problems_are_named(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(SchemaProblem, match=reason):
        derived(**overrides)


def test_avro_results_are_read_back_with_the_registered_schema() -> None:
    encoder = ResultEncoder("avro", derived())
    data, properties = encoder.message(
        event({"id": "t1", "amount": 3.0}),
        0.25,
        route="fraud",
        passthrough=["id", "country"],
        served_model="m-1",
        extra={"request_id": "r"},
    )
    schema = json.loads(encoder.topic_schema.definition)
    assert encoder.topic_schema.type == "AVRO"
    read = fastavro.schemaless_reader(io.BytesIO(data), schema)
    assert read == {"prediction": 0.25, "id": "t1", "country": None}
    assert properties["served_model"] == "m-1"
    assert properties["request_id"] == "r"
    assert properties["source_message_id"] == "(1,2,-1,0)"


@pytest.mark.parametrize("prediction", ["high", None, [0.1], True])
def test_a_prediction_that_does_not_fit_is_an_error_not_a_wrong_record(prediction: Any) -> None:
    for kind in ("avro", "json-schema"):
        encoder = ResultEncoder(kind, derived(kind))
        with pytest.raises(ResultDoesNotFit, match=r"^result does not fit .*: .*prediction"):
            encoder.message(
                event({"id": "t1"}),
                prediction,
                route="fraud",
                passthrough=["id"],
                served_model=None,
            )


def test_json_schema_results_are_json_checked_as_written() -> None:
    source = {"at": {"type": "long", "logicalType": "timestamp-millis"}}
    definition = derived("json-schema", passthrough=["at"], source_fields=source)
    assert definition["fields"][1]["type"] == ["null", "string"]
    encoder = ResultEncoder("json-schema", definition)
    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    data, _ = encoder.message(
        event({"at": at}), 1, route="r", passthrough=["at"], served_model=None
    )
    assert encoder.topic_schema.type == "JSON"
    assert orjson.loads(data) == {"prediction": 1, "at": "2026-01-02T00:00:00+00:00"}


# --------------------------------------------------------------------------- registry


def test_schema_api_paths_name_the_whole_topic() -> None:
    assert schema_path("persistent://shop/tx/in-partition-3") == "shop/tx/in"
    assert schema_path("in") == "public/default/in"


def test_the_brokers_refusal_reason_is_quoted_plainly() -> None:
    body = {"message": "Incompatible: &quot;type&quot;\n  : &quot;string&quot;", "status": "409"}
    answer = httpx.Response(409, json=body)
    assert _reason(answer) == 'HTTP 409: Incompatible: "type" : "string"'
    assert _reason(httpx.Response(500, text="boom")) == "HTTP 500: boom"


# --------------------------------------------------------------------------- check


TYPED_ROUTE = """
[source]
topics = ["persistent://public/default/tx"]
subscription = "fraud-sub"
schema = "avro"
schema_file = "schemas/tx.avsc"

[endpoint]
url = "http://127.0.0.1:5001/invocations"

[result]
topic = "persistent://public/default/scores"
passthrough = ["id", "channel"]
schema = "avro"
prediction_type = "double"
passthrough_types = { channel = "string" }
"""


def test_check_reads_schema_files_and_derives_the_result_schema(tmp_path: Path) -> None:
    directory = write_config(tmp_path, BRIDGE, {"fraud": TYPED_ROUTE})
    (directory / "schemas").mkdir()
    write_json(directory / "schemas" / "tx.avsc", TX_V2)
    route = load(directory).routes[0]
    assert route.source.schema_kind == "avro"
    assert route.source.schema_file == str(directory / "schemas" / "tx.avsc")
    assert route.result.schema_kind == "avro"


def test_check_names_each_schema_problem(tmp_path: Path) -> None:
    broken = TYPED_ROUTE.replace('prediction_type = "double"', 'prediction_type = "float64"')
    untyped = TYPED_ROUTE.replace('schema = "avro"\nschema_file = "schemas/tx.avsc"', "")
    directory = write_config(tmp_path, BRIDGE, {"broken": broken, "untyped": untyped})
    (directory / "schemas").mkdir()
    (directory / "schemas" / "tx.avsc").write_text('{"type": "record"}')
    problems = problems_of(directory)
    assert "not a valid Avro schema" in find(problems, "broken.toml", "source.schema_file").message
    assert "not an Avro type" in find(problems, "broken.toml", "result.prediction_type").message
    # A JSON source gives no types: the passthrough fields' types must be declared.
    assert "'id' has no type" in find(problems, "untyped.toml", "result").message


def test_a_misspelt_schema_key_suggests_the_key_as_written(tmp_path: Path) -> None:
    route = TYPED_ROUTE.replace('schema = "avro"\nschema_file', 'schemma = "avro"\nschema_file')
    directory = write_config(tmp_path, BRIDGE, {"fraud": route})
    problem = find(problems_of(directory), "fraud.toml", "source.schemma")
    assert "did you mean 'schema'?" in problem.message
