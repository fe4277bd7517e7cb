"""pulsar-bridge send: publish JSON lines from a file or stdin to a topic.

Each non-blank line must be one JSON object; with --key-field F it must also hold F (a
string, number or boolean), whose value becomes the message key. The payload is the line
as written. By default any bad line stops the whole input before anything is sent, so
the file can be fixed and sent again without duplicates; --skip-bad sends the good
lines. Bad lines are reported on stderr with their line numbers; every message sent is
confirmed by the broker before it is counted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import orjson

from bridge.config import Config
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_publish import OutgoingMessage, Publisher

# Messages handed to the producer at once; each chunk is confirmed before the next.
CHUNK = 1000
# Bad lines listed one by one before the rest are only counted (a binary file has many).
SHOWN_BAD_LINES = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", required=True, help="the topic to publish to")
    parser.add_argument(
        "--key-field", metavar="F", help="the message key is this field's value on each line"
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="send the good lines even if some are bad"
    )
    parser.add_argument(
        "input",
        nargs="?",
        default="-",
        type=argparse.FileType("rb"),
        metavar="FILE",
        help="JSON lines (default -: stdin)",
    )


@dataclass(frozen=True)
class Line:
    """One line to send."""

    number: int
    payload: bytes
    key: str | None


class BadLine(ValueError):
    """A line that cannot be sent; the message says why."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


def parse_line(number: int, raw: bytes, key_field: str | None) -> Line | None:
    """The line to send, None for a blank line; BadLine says what is wrong with it."""
    payload = raw.strip()
    if not payload:
        return None
    try:
        row = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadLine(number, f"not UTF-8 ({bad.reason} at byte {bad.start})") from exc
        raise BadLine(number, f"not JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise BadLine(number, f"JSON {type(row).__name__}, not an object")
    key = None if key_field is None else _key(number, row, key_field)
    return Line(number, payload, key)


def _key(number: int, row: dict[str, object], field: str) -> str:
    if field not in row:
        raise BadLine(number, f"no field {field!r} for the key")
    value = row[field]
    if isinstance(value, str):
        if not value:
            raise BadLine(number, f"field {field!r} is empty")
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    kind = "null" if value is None else type(value).__name__
    raise BadLine(number, f"field {field!r} is {kind}; a key is a string, number or boolean")


def read_lines(stream: Iterable[bytes], key_field: str | None) -> Iterator[Line | BadLine]:
    """Every line of ``stream`` to send, or why it cannot be, in order."""
    for number, raw in enumerate(stream, start=1):
        try:
            line = parse_line(number, raw, key_field)
        except BadLine as bad:
            yield bad
            continue
        if line is not None:
            yield line


@dataclass
class Tally:
    """What happened to the input, for the report."""

    sent: int = 0
    bad: int = 0
    failed: int = 0


async def run(config: Config, args: argparse.Namespace) -> int:
    stream: IO[bytes] = args.input
    connection = PulsarConnection(config.bridge.pulsar)
    try:
        publisher = await connection.publisher(args.topic)
        tally = await _send(publisher, read_lines(stream, args.key_field), args.skip_bad)
        await publisher.close()
    finally:
        await connection.close()
        stream.close()
    return _report(tally, args)


async def _send(publisher: Publisher, lines: Iterable[Line | BadLine], skip_bad: bool) -> Tally:
    tally = Tally()
    pending: list[Line] = []
    for line in lines:
        if isinstance(line, BadLine):
            tally.bad += 1
            if tally.bad <= SHOWN_BAD_LINES:
                print(line, file=sys.stderr)
            continue
        pending.append(line)
        # Without --skip-bad nothing leaves before the whole input is known to be good.
        if skip_bad and len(pending) >= CHUNK:
            await _publish(publisher, pending, tally)
            pending = []
    if tally.bad > SHOWN_BAD_LINES:
        print(f"... and {tally.bad - SHOWN_BAD_LINES} more bad line(s)", file=sys.stderr)
    if tally.bad and not skip_bad:
        return tally
    for start in range(0, len(pending), CHUNK):
        await _publish(publisher, pending[start : start + CHUNK], tally)
    return tally


async def _publish(publisher: Publisher, lines: list[Line], tally: Tally) -> None:
    messages: list[OutgoingMessage] = [(line.payload, {}, line.key) for line in lines]
    outcomes = await publisher.publish_all(messages)
    for line, error in zip(lines, outcomes, strict=True):
        if error is None:
            tally.sent += 1
        else:
            tally.failed += 1
            print(f"line {line.number}: not confirmed by the broker: {error}", file=sys.stderr)


def _report(tally: Tally, args: argparse.Namespace) -> int:
    if tally.bad and not args.skip_bad:
        print(
            f"sent nothing: {tally.bad} bad line(s); fix them, or pass --skip-bad to send "
            "the good ones",
            file=sys.stderr,
        )
        return 1
    summary = f"sent {tally.sent} message(s) to {args.topic}"
    if tally.bad:
        summary += f"; skipped {tally.bad} bad line(s)"
    if tally.failed:
        summary += f"; {tally.failed} not confirmed by the broker"
    print(summary)
    return 1 if tally.failed else 0
