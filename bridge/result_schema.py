"""Typed result topics: the result record's schema, and results encoded and checked by it.

A result is ``{"prediction": ..., <passthrough fields>}``. With ``result.schema`` set to
``avro`` or ``json-schema`` its schema is an Avro record derived from the route:
``prediction`` has the declared ``result.prediction_type``, and each passthrough field the
type the source schema gives it (or ``result.passthrough_types``), nullable with a null
default, since an event may lack it. Pulsar registers both kinds with that definition; an
``avro`` result is plain Avro binary, a ``json-schema`` one JSON. Every result is checked
against the schema before it is encoded: a prediction that does not fit is
:class:`ResultDoesNotFit` for that event alone, never a silently wrong record.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import fastavro
import orjson
from fastavro.validation import ValidationError, validate

from bridge.events import Event, result_message
from bridge.schemas import SchemaProblem, TopicSchema

ResultKind = Literal["none", "json-schema", "avro"]
PULSAR_RESULT_TYPES: Mapping[str, str] = {"avro": "AVRO", "json-schema": "JSON"}
NAMESPACE = "pulsar_bridge"


class ResultDoesNotFit(ValueError):
    """A result that does not fit the result topic's schema; the message says where."""


def record_name(route: str) -> str:
    """An Avro name for the route's result record (letters, digits and _ only)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", route)
    return f"{name if re.match(r'[A-Za-z_]', name) else '_' + name}_result"


def derive(
    route: str,
    *,
    prediction_type: Any,
    passthrough: Sequence[str],
    declared: Mapping[str, Any],
    source_fields: Mapping[str, Any],
    kind: ResultKind,
) -> dict[str, Any]:
    """The result record's Avro definition; SchemaProblem names a field it cannot type.

    ``declared`` (``result.passthrough_types``) wins over ``source_fields`` (what the
    source schema says a decoded record holds). Time types stay logical in Avro results;
    in JSON results they are the text the JSON encoder writes.
    """
    fields: list[dict[str, Any]] = [{"name": "prediction", "type": prediction_type}]
    for name in passthrough:
        if name == "prediction":
            raise SchemaProblem("a passthrough field cannot be named 'prediction'")
        if name in declared:
            field_type = declared[name]
        elif name in source_fields:
            field_type = _for_result(source_fields[name], kind)
        else:
            raise SchemaProblem(
                f"passthrough field {name!r} has no type: the source schema does not give "
                f"one; declare it in result.passthrough_types"
            )
        if _is_record(field_type):
            raise SchemaProblem(
                f"passthrough field {name!r} is a record: declare its type in "
                "result.passthrough_types"
            )
        fields.append({"name": name, "type": _nullable(field_type), "default": None})
    definition = {
        "type": "record",
        "name": record_name(route),
        "namespace": NAMESPACE,
        "fields": fields,
    }
    try:
        fastavro.parse_schema(definition)
    except Exception as exc:  # fastavro raises several kinds for a bad definition
        raise SchemaProblem(f"the result schema is not valid Avro: {exc}") from exc
    return definition


def _for_result(avro_type: Any, kind: ResultKind) -> Any:
    if isinstance(avro_type, list):
        return [_for_result(t, kind) for t in avro_type]
    if isinstance(avro_type, dict) and "logicalType" in avro_type and kind != "avro":
        return "string"  # a datetime in the record: JSON writes it as RFC 3339 text
    return avro_type


def _is_record(avro_type: Any) -> bool:
    if isinstance(avro_type, list):
        return any(_is_record(t) for t in avro_type)
    return isinstance(avro_type, dict) and avro_type.get("type") == "record"


def _nullable(avro_type: Any) -> list[Any]:
    # A null default needs "null" first in the union.
    members = avro_type if isinstance(avro_type, list) else [avro_type]
    return ["null", *(m for m in members if m != "null")]


class ResultEncoder:
    """Builds one event's result message in the topic's schema; checks it fits first."""

    def __init__(self, kind: ResultKind, definition: dict[str, Any]) -> None:
        self.kind = kind
        self.definition = definition
        self._parsed = fastavro.parse_schema(definition)
        self._passthrough = [f["name"] for f in definition["fields"][1:]]

    @property
    def topic_schema(self) -> TopicSchema:
        """The schema to register on the result topic."""
        return TopicSchema(PULSAR_RESULT_TYPES[self.kind], json.dumps(self.definition))

    def message(
        self,
        event: Event,
        prediction: Any,
        *,
        route: str,
        passthrough: Sequence[str],
        served_model: str | None,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Payload and properties of the result (the properties as for untyped results)."""
        # The properties are built by the one function that builds every result's.
        _, properties = result_message(
            event, None, route=route, passthrough=(), served_model=served_model, extra=extra
        )
        row = event.row
        body = {"prediction": prediction, **{name: row.get(name) for name in self._passthrough}}
        if self.kind == "json-schema":
            # Checked as a typed consumer will read it: the JSON, not the Python values.
            data = orjson.dumps(body)
            self._check(orjson.loads(data))
            return data, properties
        self._check(body)
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self._parsed, body)
        return out.getvalue(), properties

    def _check(self, body: dict[str, Any]) -> None:
        try:
            validate(body, self._parsed, raise_errors=True)
        except ValidationError as exc:
            # fastavro names each field by its full record name: the field name says enough.
            prefix = f"{NAMESPACE}.{self.definition['name']}."
            problems = "; ".join(str(e).replace(prefix, "") for e in exc.errors)
            raise ResultDoesNotFit(f"result does not fit the result schema: {problems}") from exc
