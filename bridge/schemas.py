"""Typed source payloads: schema files and Pulsar schema definitions, and their decoders.

Pulsar keeps one schema per topic (with versions), as a type and a definition text:
``AVRO`` and ``JSON`` carry an Avro record definition (a JSON-schema topic's payloads are
JSON; only its definition is Avro's), ``PROTOBUF_NATIVE`` a JSON object with a base64
``FileDescriptorSet`` and the root message's name. A route reads the same from files:
an ``.avsc``, a JSON schema (Pulsar's Avro-style definition or a JSON Schema document),
or a descriptor set (``protoc --include_imports --descriptor_set_out``).

Every decoder turns one payload into the event's record: the same kind of dict a JSON
event parses to, so the request is built the same way. Values JSON cannot carry are made
plain here, once: bytes become base64 text, Avro decimals floats, UUIDs text; protobuf
enums their names. :meth:`SourceSchema.field_types` says what each field then holds, as
an Avro type, for the result schema's passthrough fields (:mod:`bridge.result_schema`).
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

import fastavro

SourceKind = Literal["avro", "json-schema", "protobuf"]
Decoder = Callable[[bytes], dict[str, Any]]
# Pulsar's schema types the bridge decodes, by source kind.
PULSAR_TYPES: Mapping[str, SourceKind] = {
    "AVRO": "avro",
    "JSON": "json-schema",
    "PROTOBUF_NATIVE": "protobuf",
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string"})
_TIME_TYPES = frozenset(
    {
        "date",
        "time-millis",
        "time-micros",
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
    }
)


class SchemaProblem(ValueError):
    """A schema (a file, or a topic's registered one) the bridge cannot use, and why."""


class Undecodable(ValueError):
    """A payload that does not decode with its schema; the message says why."""


@dataclass(frozen=True)
class TopicSchema:
    """A schema as Pulsar stores it: its type name, definition text and version."""

    type: str  # "AVRO", "JSON", "PROTOBUF_NATIVE", ...
    definition: str
    version: int | None = None


class SourceSchema(Protocol):
    """What a route knows of its source records."""

    kind: SourceKind

    def field_types(self) -> dict[str, Any]:
        """Each top-level field's Avro type as the decoded record holds it."""
        ...


# --------------------------------------------------------------------------- Avro


class AvroRecord:
    """An Avro record schema, parsed once; its decoder reads Pulsar's plain Avro binary."""

    kind: SourceKind = "avro"

    def __init__(self, definition: object) -> None:
        if not isinstance(definition, dict) or definition.get("type") != "record":
            raise SchemaProblem("an Avro schema for events must be a record")
        try:
            parsed = fastavro.parse_schema(definition)
        except Exception as exc:  # fastavro raises several kinds for a bad definition
            raise SchemaProblem(f"not a valid Avro schema: {exc}") from exc
        assert isinstance(parsed, dict)  # a record's parsed form
        self.parsed: dict[str, Any] = parsed
        self.definition: dict[str, Any] = definition
        self.name = str(parsed["name"])
        self._plain = _needs_plain(definition)

    @classmethod
    def from_text(cls, text: str) -> AvroRecord:
        try:
            return cls(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SchemaProblem(f"not JSON: {exc}") from exc

    def field_types(self) -> dict[str, Any]:
        return _avro_field_types(self.definition)

    def required(self) -> tuple[str, ...]:
        """Fields a JSON record must have: neither nullable nor with a default."""
        return tuple(
            f["name"]
            for f in self.definition["fields"]
            if "default" not in f and not _nullable(f["type"])
        )

    def decoder(self, reader: AvroRecord | None = None) -> Decoder:
        """Decode what this schema wrote, resolved to ``reader``'s shape when given."""
        writer, resolved = self.parsed, None if reader is None else reader.parsed
        plain = self._plain or (reader is not None and reader._plain)

        def decode(data: bytes) -> dict[str, Any]:
            stream = io.BytesIO(data)
            try:
                row = fastavro.schemaless_reader(stream, writer, resolved)
            except Exception as exc:  # any failure on outside bytes is the payload's fault
                raise Undecodable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
            left = len(data) - stream.tell()
            if left:
                raise Undecodable(f"{left} byte(s) left over after the record")
            assert isinstance(row, dict)  # a record schema reads a dict
            return _plain_row(row) if plain else row

        return decode


def _needs_plain(schema: object) -> bool:
    """Whether records of ``schema`` can hold values JSON cannot carry as they are."""
    if isinstance(schema, str):
        return schema in ("bytes", "fixed")
    if isinstance(schema, list):
        return any(_needs_plain(s) for s in schema)
    if isinstance(schema, dict):
        if schema.get("logicalType") in ("decimal", "uuid"):
            return True
        return any(_needs_plain(v) for k, v in schema.items() if k in _TYPE_KEYS)
    return False


_TYPE_KEYS = ("type", "items", "values", "fields")


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in row.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return _plain_row(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return float(value)  # models take numbers; the exact text would be a string
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _nullable(avro_type: object) -> bool:
    return avro_type == "null" or (isinstance(avro_type, list) and "null" in avro_type)


def _avro_field_types(record: Mapping[str, Any]) -> dict[str, Any]:
    return {f["name"]: plain_avro_type(f["type"]) for f in record["fields"]}


def plain_avro_type(avro_type: Any) -> Any:
    """The Avro type of a decoded value once made plain; a record stays as it is."""
    if isinstance(avro_type, list):
        members: list[Any] = []
        for member in (plain_avro_type(t) for t in avro_type):
            if member not in members:
                members.append(member)
        return members
    if isinstance(avro_type, str):
        return _PLAIN_NAMES.get(avro_type, avro_type)
    return _plain_complex(avro_type) if isinstance(avro_type, dict) else avro_type


def _plain_complex(avro_type: dict[str, Any]) -> Any:
    base, logical = avro_type.get("type"), avro_type.get("logicalType")
    if logical == "decimal":
        return "double"
    if logical in _TIME_TYPES:
        return {"type": base, "logicalType": logical}
    if base == "array":
        return {"type": "array", "items": plain_avro_type(avro_type["items"])}
    if base == "map":
        return {"type": "map", "values": plain_avro_type(avro_type["values"])}
    if isinstance(base, str) and (base in _PRIMITIVES or base in _PLAIN_NAMES):
        return _PLAIN_NAMES.get(base, base)
    return avro_type  # a record: the result schema asks for a declared type instead


# Types whose decoded values are made plain text (base64 for bytes, the symbol for enums).
_PLAIN_NAMES = {"bytes": "string", "fixed": "string", "enum": "string"}


# --------------------------------------------------------------------------- JSON


class JsonRecord:
    """A JSON-schema topic's record: JSON payloads with the fields the schema requires.

    Payloads are parsed as every JSON event is; the schema adds only the check that the
    fields it requires are there (Pulsar itself never validates JSON payloads).
    """

    kind: SourceKind = "json-schema"

    def __init__(self, required: tuple[str, ...], types: dict[str, Any]) -> None:
        self.required = required
        self._types = types

    @classmethod
    def from_text(cls, text: str) -> JsonRecord:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaProblem(f"not JSON: {exc}") from exc
        if isinstance(document, dict) and document.get("type") == "record":
            avro = AvroRecord(document)  # Pulsar's form: an Avro record definition
            return cls(avro.required(), avro.field_types())
        if isinstance(document, dict) and isinstance(document.get("properties"), dict):
            return cls(*_json_schema_fields(document))
        raise SchemaProblem(
            "a JSON schema must be an Avro record definition (as Pulsar registers it) or a "
            "JSON Schema object with 'properties'"
        )

    def field_types(self) -> dict[str, Any]:
        return dict(self._types)

    def missing(self, row: Mapping[str, Any]) -> list[str]:
        return [name for name in self.required if name not in row]


_JSON_SCHEMA_TYPES = {
    "string": "string",
    "integer": "long",
    "number": "double",
    "boolean": "boolean",
}


def _json_schema_fields(document: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    required = document.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaProblem("'required' must be a list of field names")
    types: dict[str, Any] = {}
    for name, spec in document["properties"].items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind in _JSON_SCHEMA_TYPES:
            types[name] = _JSON_SCHEMA_TYPES[kind]
    return tuple(required), types
