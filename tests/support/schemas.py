"""Small schema fixtures: two Avro versions of a transaction, a protobuf descriptor set.

The descriptor set is built in code (what ``protoc --include_imports --descriptor_set_out``
writes for ``transaction.proto``), so the tests need no protoc:

    syntax = "proto3";
    package shop;
    enum Channel { WEB = 0; STORE = 1; }
    message Transaction {
      string id = 1; double amount = 2; int64 count = 3; Channel channel = 4;
      bytes tag = 5; repeated double history = 6; optional string note = 7;
    }
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

TX_V1: dict[str, Any] = {
    "type": "record",
    "name": "Transaction",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "double"},
    ],
}
# Version 2 adds a field with a default: compatible both ways (Pulsar's FULL strategy).
TX_V2: dict[str, Any] = {
    **TX_V1,
    "fields": [*TX_V1["fields"], {"name": "country", "type": "string", "default": "NL"}],
}


def avro_bytes(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Plain Avro binary, as Pulsar's Avro producers write it (no container header)."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def transaction_descriptor_set() -> bytes:
    """The FileDescriptorSet of ``transaction.proto`` above."""
    fdp = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="transaction.proto", package="shop")
    file.syntax = "proto3"
    enum = file.enum_type.add(name="Channel")
    enum.value.add(name="WEB", number=0)
    enum.value.add(name="STORE", number=1)
    tx = file.message_type.add(name="Transaction")
    scalar = (
        ("id", 1, fdp.TYPE_STRING),
        ("amount", 2, fdp.TYPE_DOUBLE),
        ("count", 3, fdp.TYPE_INT64),
        ("tag", 5, fdp.TYPE_BYTES),
    )
    for name, number, kind in scalar:
        tx.field.add(name=name, number=number, type=kind, label=fdp.LABEL_OPTIONAL)
    tx.field.add(
        name="channel",
        number=4,
        type=fdp.TYPE_ENUM,
        type_name=".shop.Channel",
        label=fdp.LABEL_OPTIONAL,
    )
    tx.field.add(name="history", number=6, type=fdp.TYPE_DOUBLE, label=fdp.LABEL_REPEATED)
    # proto3 `optional`: a field with presence, through its synthetic oneof.
    tx.oneof_decl.add(name="_note")
    tx.field.add(
        name="note",
        number=7,
        type=fdp.TYPE_STRING,
        label=fdp.LABEL_OPTIONAL,
        oneof_index=0,
        proto3_optional=True,
    )
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


def transaction_class() -> type[message.Message]:
    """A message class for ``shop.Transaction`` (what protoc's Python output would give)."""
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(transaction_descriptor_set()).file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Transaction"))


def transaction_bytes(**fields: Any) -> bytes:
    return transaction_class()(**fields).SerializeToString()
