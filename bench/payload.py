"""The benchmark's events (1 KB JSON objects the emulator scores), a batching pre-fill, and
what the relay helpers share (command line, consumer)."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import orjson
import pulsar

EVENT_BYTES = 1024


def event_bytes(i: int, ts: float = 0.0) -> bytes:
    """Event ``i`` as exactly :data:`EVENT_BYTES` of JSON; ``ts`` is its publish time (epoch s).

    A few numeric fields for the model, the rest a string pad: the emulator's cost per
    event stays small, so the benchmark measures the bridge, not the stand-in endpoint.
    """
    row: dict[str, Any] = {
        "id": f"e{i}",
        "ts": ts,
        "amount": (i * 37) % 500 / 10,
        "age": 20 + i % 50,
        "merchant": "m",
        "note": "",
    }
    row["note"] = "x" * (EVENT_BYTES - len(orjson.dumps(row)))
    return orjson.dumps(row)


def client(service_url: str) -> Any:
    """A synchronous Pulsar client that keeps the C++ client's console quiet."""
    return pulsar.Client(
        service_url,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
        operation_timeout_seconds=30,
    )


def batching_producer(pulsar_client: Any, topic: str, *, delay_ms: int = 10) -> Any:
    """The fast producer of the reference numbers: 1000 messages or ``delay_ms`` per batch."""
    return pulsar_client.create_producer(
        topic,
        batching_enabled=True,
        batching_max_messages=1000,
        batching_max_publish_delay_ms=delay_ms,
        block_if_queue_full=True,
        max_pending_messages=10_000,
    )


def prefill(pulsar_client: Any, topic: str, count: int) -> float:
    """Publish ``count`` events to ``topic`` and wait for every confirmation; the seconds taken.

    Raises RuntimeError if the broker refused any of them.
    """
    started = time.monotonic()
    producer = batching_producer(pulsar_client, topic)
    failures: list[object] = []
    confirmed = threading.Semaphore(0)

    def on_sent(result: Any, _message_id: Any) -> None:
        if result != pulsar.Result.Ok:
            failures.append(result)
        confirmed.release()

    for i in range(count):
        producer.send_async(event_bytes(i), on_sent)
    producer.flush()
    for _ in range(count):
        if not confirmed.acquire(timeout=60):
            raise RuntimeError(f"pre-fill of {topic}: confirmations stopped arriving")
    producer.close()
    if failures:
        raise RuntimeError(f"pre-fill of {topic}: {len(failures)} sends failed ({failures[0]})")
    return time.monotonic() - started


def relay_arguments(description: str) -> argparse.ArgumentParser:
    """The command line every relay helper takes (ceiling, naive); add its own to it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--service-url", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--subscription", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    return parser


def shared_consumer(pulsar_client: Any, topic: str, subscription: str, **options: Any) -> Any:
    """A Shared subscription from the earliest message, as the relay helpers read their
    backlog (``options``: more ``subscribe`` settings)."""
    return pulsar_client.subscribe(
        topic,
        subscription,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        **options,
    )
