"""pulsar-bridge tail: print the last messages of a topic, and with --follow the new ones.

Meant for result and dead-letter topics: each message is shown with its key, its
properties (a dead letter's error, route, source topic and message id) and its payload.
It reads with a non-durable reader: no subscription is created or left behind on Apache
Pulsar, and no message is acknowledged on any subscription. To find the last --limit
messages it reads the topic from its first message, so on a long topic it takes a while
before the first line appears.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
from collections import deque
from typing import Any

import orjson

from bridge.config import Config
from bridge.pulsar_io import Position, PulsarConnection, Received, TopicReader
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


def as_json(message: Received) -> dict[str, Any]:
    """One message as a JSON object; the payload as text, or base64 when it is not UTF-8."""
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
    return shown


def as_text(message: Received) -> str:
    """One message for a person: a header line, one line per property, the payload."""
    lines = [f"{_iso(message.publish_time_ms)}  {message.message_id}  key={message.key or '-'}"]
    lines += [f"  {name}={value}" for name, value in sorted(message.properties.items())]
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
            await _tail(reader, args)
        finally:
            await reader.close()
    finally:
        await connection.close()
    return 0


async def _tail(reader: TopicReader, args: argparse.Namespace) -> None:
    new = FirstSight()
    last: deque[Received] = deque(maxlen=args.limit)
    while batch := await reader.read_available(READ_BATCH):
        last.extend(message for message in batch if new(message))
    for message in last:
        _show(message, args.json)
    while args.follow:
        arrived = await reader.read(FOLLOW_POLL_MS)
        if arrived is not None and new(arrived):
            _show(arrived, args.json)


def _show(message: Received, as_json_lines: bool) -> None:
    if as_json_lines:
        print(orjson.dumps(as_json(message)).decode(), flush=True)
    else:
        print(as_text(message), flush=True)
