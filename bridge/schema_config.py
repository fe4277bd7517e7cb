"""A route's schema keys, checked when its config is loaded (so ``check`` refuses them
too), and the schemas they name: read from files, or from a registry's answer.

``source.schema`` with ``schema_file`` and ``message_type``; ``result.schema`` with
``prediction_type`` and ``passthrough_types``. Schema files are read and parsed here,
relative paths from the config directory; the result schema is derived as at route start
wherever the source schema is known before it (not for ``auto``, known only then).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro

from bridge.result_schema import ResultKind, derive
from bridge.schema_protobuf import ProtobufRecord
from bridge.schemas import (
    PULSAR_TYPES,
    AvroRecord,
    JsonRecord,
    SchemaProblem,
    SourceKind,
    SourceSchema,
    TopicSchema,
)

if TYPE_CHECKING:
    from bridge.config_route import SourceSettings

FILE_KINDS: Mapping[str, str] = {
    "avro": "an Avro schema (.avsc)",
    "json-schema": "a JSON schema",
    "protobuf": "a protobuf descriptor set (protoc --include_imports --descriptor_set_out)",
}


def source_schema_file(
    kind: str, written: str | None, message_type: str | None, base_dir: Path | None
) -> str | None:
    """The schema file's full path after reading it; ValueError says what is wrong."""
    if message_type is not None and kind not in ("protobuf", "auto"):
        raise ValueError(f"message_type applies to schema = 'protobuf' only, not {kind!r}")
    if kind not in FILE_KINDS:
        if written is not None:
            raise ValueError(f"schema = {kind!r} takes no schema_file")
        return None
    if written is None:
        if kind == "json-schema":
            return None  # the payloads are JSON either way; a file adds required fields
        raise ValueError(f"schema = {kind!r} needs schema_file: {FILE_KINDS[kind]}")
    path = Path(written).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        read_schema_file(_source_kind(kind), path, message_type)
    except SchemaProblem as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return str(path)


def load_source_schema(source: SourceSettings) -> SourceSchema | None:
    """The schema a route's file declares (None: no file); the file was checked at load."""
    if source.schema_file is None:
        return None
    return read_schema_file(
        _source_kind(source.schema_kind), Path(source.schema_file), source.message_type
    )


def _source_kind(kind: str) -> SourceKind:
    if kind == "avro":
        return "avro"
    if kind == "json-schema":
        return "json-schema"
    if kind == "protobuf":
        return "protobuf"
    raise ValueError(f"no schema file for schema = {kind!r}")


def avro_type(value: Any) -> Any:
    """``value`` if it is an Avro type (a name, or a definition as a TOML table or list)."""
    probe = {"type": "record", "name": "probe", "fields": [{"name": "value", "type": value}]}
    try:
        fastavro.parse_schema(probe)
    except Exception as exc:  # fastavro raises several kinds for a bad definition
        raise ValueError(f"not an Avro type: {exc}") from exc
    return value


def check_result(
    route: str,
    source: SourceSettings,
    *,
    kind: ResultKind,
    prediction_type: Any,
    passthrough: Sequence[str],
    declared: Mapping[str, Any],
) -> None:
    """Raise ValueError when the result schema cannot be derived for this source."""
    if kind == "none":
        if prediction_type is not None or declared:
            raise ValueError("prediction_type and passthrough_types need schema = avro|json-schema")
        return
    if prediction_type is None:
        raise ValueError(f"schema = {kind!r} needs prediction_type (an Avro type)")
    if source.schema_kind == "auto":
        # Passthrough types come from the topic's schema, read at route start.
        passthrough = [name for name in passthrough if name in declared]
        fields: dict[str, Any] = {}
    else:
        schema = load_source_schema(source) if source.schema_kind != "json" else None
        fields = schema.field_types() if schema is not None else {}
    try:
        derive(
            route,
            prediction_type=prediction_type,
            passthrough=passthrough,
            declared=declared,
            source_fields=fields,
            kind=kind,
        )
    except SchemaProblem as exc:
        raise ValueError(str(exc)) from exc


def read_schema_file(kind: SourceKind, path: Path, message_type: str | None) -> SourceSchema:
    """The schema in ``path`` for a source of ``kind``; SchemaProblem says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SchemaProblem(f"cannot read {path}: {exc.strerror or exc}") from exc
    if kind == "protobuf":
        return ProtobufRecord(data, message_type)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaProblem(f"{path} is not UTF-8 text") from exc
    return AvroRecord.from_text(text) if kind == "avro" else JsonRecord.from_text(text)


def from_topic_schema(schema: TopicSchema) -> SourceSchema:
    """A registered schema as the bridge reads it; SchemaProblem for types it cannot."""
    kind = PULSAR_TYPES.get(schema.type)
    if kind == "avro":
        return AvroRecord.from_text(schema.definition)
    if kind == "json-schema":
        return JsonRecord.from_text(schema.definition)
    if kind == "protobuf":
        return ProtobufRecord.from_pulsar(schema.definition)
    hint = (
        ': its definition has no field numbers; use schema = "protobuf" with a descriptor set'
        if schema.type == "PROTOBUF"
        else ""
    )
    raise SchemaProblem(f"schema type {schema.type} is not one the bridge decodes{hint}")
