"""What typed topics cost at intake: CPU per event to decode Avro (and protobuf) vs JSON.

A micro-benchmark of the one step a schema changes, the payload -> event record decode,
through the same functions the relay calls (``bridge.events.decode`` for JSON, the route
decoders of ``bridge.route_schemas`` for the others); no broker, no endpoint. Two shapes:
the relay benchmark's 1 KB event (six fields, a long string pad) and a 30-feature event
(numbers, where per-field costs dominate). Each row is the median of ``--repeat`` runs of
``--events`` decodes, measured in process CPU time::

    .venv/bin/python -m bench.schema_decode [--events 100000] [--repeat 5] [--json FILE]

For scale: the whole bridge spends about 31-39 us of CPU per event at full speed (README).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import fastavro
import orjson
from google.protobuf import descriptor_pb2

from bench.payload import event_bytes
from bridge.events import Event, decode
from bridge.pulsar_source import Received
from bridge.route_schemas import _event_decoder
from bridge.schema_protobuf import ProtobufRecord
from bridge.schemas import AvroRecord

FEATURES = 30


class _Payload:
    """What decoding reads of a received message."""

    __slots__ = ("data", "key", "message_id", "schema_version", "topic")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.key = None
        self.topic = "persistent://public/default/bench"
        self.message_id = "(0,0,-1,0)"
        self.schema_version = 0


def _record(fields: dict[str, str]) -> dict[str, Any]:
    """A record of ``fields``; the last one has a default, so older writers (without it)
    resolve to this schema."""
    record: list[dict[str, Any]] = [{"name": n, "type": t} for n, t in fields.items()]
    record[-1]["default"] = "" if record[-1]["type"] == "string" else 0
    return {"type": "record", "name": "Event", "fields": record}


def _rows(shape: str, count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if shape == "1kb":
        rows = [orjson.loads(event_bytes(i)) for i in range(count)]
        fields = {"id": "string", "ts": "double", "amount": "double", "age": "long"}
        return _record({**fields, "merchant": "string", "note": "string"}), rows
    names = [f"f{n}" for n in range(FEATURES)]
    rows = [
        {"id": f"e{i}", **{n: (i * 7 + k) / 13 for k, n in enumerate(names)}} for i in range(count)
    ]
    return _record({"id": "string", **dict.fromkeys(names, "double")}), rows


def _descriptor_set(schema: dict[str, Any]) -> bytes:
    """A protobuf message with the record's fields (strings, doubles, int64s)."""
    kinds = {"string": 9, "double": 1, "long": 3}  # FieldDescriptorProto.Type values
    file = descriptor_pb2.FileDescriptorProto(name="bench.proto", package="bench", syntax="proto3")
    message = file.message_type.add(name="Event")
    for number, field in enumerate(schema["fields"], start=1):
        message.field.add(name=field["name"], number=number, type=kinds[field["type"]], label=1)
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


def _cases(shape: str, count: int) -> dict[str, tuple[Callable[[Received], Event], list[bytes]]]:
    schema, rows = _rows(shape, count)
    avro = AvroRecord(schema)
    proto = ProtobufRecord(_descriptor_set(schema), "bench.Event")
    # The same record written by an older producer: resolved to the route's schema.
    older = AvroRecord({**schema, "fields": schema["fields"][:-1]})
    older_rows = [
        {k: v for k, v in row.items() if k != schema["fields"][-1]["name"]} for row in rows
    ]
    return {
        "json": (decode, [orjson.dumps(row) for row in rows]),
        "avro": (_event_decoder(avro, None, "bench"), [_write(avro, row) for row in rows]),
        "avro, older writer resolved": (
            _event_decoder(avro, older, "bench"),
            [_write(older, row) for row in older_rows],
        ),
        "protobuf": (
            _event_decoder(proto, None, "bench"),
            [proto.message_class(**row).SerializeToString() for row in rows],
        ),
    }


def _write(schema: AvroRecord, row: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, row)
    return out.getvalue()


def _cpu_us_per_event(decoder: Callable[[Received], Event], payloads: list[bytes]) -> float:
    messages = [cast(Received, _Payload(p)) for p in payloads]
    started = time.process_time()
    for message in messages:
        decoder(message)
    return (time.process_time() - started) / len(messages) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    report: list[dict[str, Any]] = []
    print(
        f"{'shape':<10} {'decode':<28} {'bytes':>6} {'us/event':>9} {'events/s':>10} {'vs json':>8}"
    )
    for shape in ("1kb", "features"):
        baseline = None
        for name, (decoder, payloads) in _cases(shape, args.events).items():
            runs = [_cpu_us_per_event(decoder, payloads) for _ in range(args.repeat)]
            us = statistics.median(runs)
            baseline = baseline or us
            size = statistics.mean(len(p) for p in payloads)
            row = {"shape": shape, "decode": name, "bytes": round(size), "us_per_event": us}
            report.append({**row, "runs_us": runs})
            print(
                f"{shape:<10} {name:<28} {size:>6.0f} {us:>9.2f} {1e6 / us:>10,.0f} "
                f"{us / baseline:>7.2f}x"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
