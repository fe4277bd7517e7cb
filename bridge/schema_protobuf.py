"""Protobuf source records: a message type from a descriptor set, decoded to plain values.

The descriptor set comes from a file (``protoc --include_imports --descriptor_set_out``)
or from a topic's ``PROTOBUF_NATIVE`` schema, whose definition is a JSON object with the
base64 ``fileDescriptorSet`` and the ``rootMessageTypeName``. A decoded message becomes a
dict of every field (scalars at their defaults included, as proto3 reads them; unset
fields with presence as null), enums by name, bytes as base64 text, nested messages as
dicts. Unknown fields are skipped, so any version of a message type reads with another.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from bridge.schemas import SchemaProblem, SourceKind, Undecodable


class ProtobufRecord:
    """A protobuf message type from a descriptor set; decodes the native binary form."""

    kind: SourceKind = "protobuf"

    def __init__(self, descriptor_set: bytes, message_type: str | None) -> None:
        try:
            files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
        except message.DecodeError as exc:
            raise SchemaProblem(f"not a protobuf FileDescriptorSet: {exc}") from exc
        pool = descriptor_pool.DescriptorPool()
        _add_in_dependency_order(pool, list(files))
        name = message_type or _only_message(files)
        try:
            self.descriptor: Descriptor = pool.FindMessageTypeByName(name)
        except KeyError as exc:
            raise SchemaProblem(f"no message type {name!r} in the descriptor set") from exc
        self.message_class = message_factory.GetMessageClass(self.descriptor)

    @classmethod
    def from_pulsar(cls, definition: str) -> ProtobufRecord:
        """From a PROTOBUF_NATIVE definition, as the broker stores it."""
        try:
            data = json.loads(definition)
            descriptor_set = base64.b64decode(data["fileDescriptorSet"])
            root = str(data["rootMessageTypeName"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaProblem(f"not a PROTOBUF_NATIVE schema definition: {exc}") from exc
        return cls(descriptor_set, root)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            parsed = self.message_class.FromString(data)
        except message.DecodeError as exc:
            raise Undecodable(f"not a {self.descriptor.full_name}: {exc}") from exc
        return _message_row(parsed)

    def field_types(self) -> dict[str, Any]:
        types: dict[str, Any] = {}
        for field in self.descriptor.fields:
            avro = _PROTO_AVRO.get(field.type)
            if avro is not None and field.message_type is None:
                types[field.name] = {"type": "array", "items": avro} if _repeated(field) else avro
        return types


_PROTO_AVRO: Mapping[int, str] = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT32: "int",
    FieldDescriptor.TYPE_SINT32: "int",
    FieldDescriptor.TYPE_SFIXED32: "int",
    FieldDescriptor.TYPE_UINT32: "long",
    FieldDescriptor.TYPE_FIXED32: "long",
    FieldDescriptor.TYPE_INT64: "long",
    FieldDescriptor.TYPE_SINT64: "long",
    FieldDescriptor.TYPE_SFIXED64: "long",
    FieldDescriptor.TYPE_UINT64: "long",
    FieldDescriptor.TYPE_FIXED64: "long",
    FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "string",
    FieldDescriptor.TYPE_ENUM: "string",
}


def _add_in_dependency_order(
    pool: descriptor_pool.DescriptorPool, files: list[descriptor_pb2.FileDescriptorProto]
) -> None:
    """Add files after those they import (protoc orders them so; hand-made sets may not)."""
    added: set[str] = set()
    while files:
        ready = [f for f in files if all(d in added for d in f.dependency)]
        if not ready:
            missing = sorted({d for f in files for d in f.dependency} - added)
            raise SchemaProblem(f"the descriptor set lacks imported file(s): {missing}")
        for file in ready:
            try:
                pool.Add(file)
            except (TypeError, ValueError) as exc:
                raise SchemaProblem(f"invalid descriptor {file.name}: {exc}") from exc
            added.add(file.name)
            files.remove(file)


def _only_message(files: Any) -> str:
    names = [
        f"{file.package}.{m.name}" if file.package else m.name
        for file in files
        for m in file.message_type
    ]
    if len(names) != 1:
        raise SchemaProblem(
            f"the descriptor set has {len(names)} message types: name one with message_type"
        )
    return names[0]


def _message_row(msg: message.Message) -> dict[str, Any]:
    """Every field of ``msg`` (scalars at their defaults included), as plain values."""
    row: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            row[field.name] = {k: _field_value(value_field, v) for k, v in value.items()}
        elif _repeated(field):
            row[field.name] = [_field_value(field, v) for v in value]
        elif field.has_presence and not msg.HasField(field.name):
            row[field.name] = None
        else:
            row[field.name] = _field_value(field, value)
    return row


def _field_value(field: Any, value: Any) -> Any:
    # Any: the C implementation's descriptors are their own classes to the type stubs.
    if field.message_type is not None:
        return _message_row(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _repeated(field: Any) -> bool:
    # FieldDescriptor.is_repeated in recent protobuf releases; label (gone in 7) before it.
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED
