"""Count results on a topic and time them; with ``--latency``, measure publish -> result.

Runs as its own process so its CPU does not share a GIL with anything measured.

Counting uses ``batch_receive`` on the C extension's consumer and acks every message on
its own (about 3 us a message, so 0.05-0.15 of a core); the time of the last result is
taken when its batch returns, at most ``--wait-ms`` late. pulsar-lite redelivers
messages left unacked or acked cumulatively (100k read that way came back as 112k-170k)
and, on Exclusive subscriptions, even acked ones; a duplicate would end the count
before the last result exists, so results are counted by unique message id
(``serialize()``: 0.7 us, against 2.4 us for ``str``) and ``duplicates`` says how many
were dropped.

Latency mode receives one message at a time, so each arrival time is exact, reads the
``ts`` passthrough field (epoch seconds at publish) and times the first arrival of each
unique ``id``.

Both give up once results stop coming for ``--stall-s``: pulsar-lite occasionally stops
dispatching to a consumer (seen once in ~20 ceiling runs, at 34k of 100k events), and a
repetition that waits out the whole time bound would only waste minutes.

Lines: ``subscribed``, then ``done`` with ``count``, ``duplicates``, ``first``/``last``
(monotonic seconds, comparable across processes on Linux) and, in latency mode,
``latency_ms`` percentiles and ``p99_ms_by_second``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import orjson
import pulsar

from bench.payload import client
from bench.procs import emit, linger


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0-100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def _subscribe(pulsar_client: Any, topic: str, wait_ms: int) -> Any:
    return pulsar_client.subscribe(
        topic,
        f"bench-reader-{uuid.uuid4().hex[:8]}",
        # Shared with the default queue: pulsar-lite delivered 100k messages to an Exclusive
        # subscription with a 5000-message queue 135k-200k times while they were written.
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=1000,
        batch_receive_policy=pulsar.ConsumerBatchReceivePolicy(1000, -1, wait_ms),
    )


def _stalled(last: float | None, stall_s: float) -> bool:
    return last is not None and time.monotonic() - last > stall_s


def count_results(consumer: Any, count: int, deadline: float, stall_s: float) -> dict[str, Any]:
    seen: set[bytes] = set()
    received = 0
    first = last = None
    raw = consumer._consumer  # the C extension's consumer: no Python wrapper per message
    while len(seen) < count and time.monotonic() < deadline:
        messages = raw.batch_receive()
        if not messages:
            if _stalled(last, stall_s):
                break
            continue
        last = time.monotonic()
        first = first or last
        received += len(messages)
        for message in messages:
            raw.acknowledge(message)
            seen.add(message.message_id().serialize())
    return {"count": len(seen), "duplicates": received - len(seen), "first": first, "last": last}


def time_results(consumer: Any, count: int, deadline: float, stall_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    by_second: dict[int, list[float]] = {}
    ids: set[str] = set()
    first = last = None
    first_ts: float | None = None
    duplicates = 0
    while len(ids) < count and time.monotonic() < deadline:
        try:
            message = consumer.receive(timeout_millis=200)
        except pulsar.Timeout:
            if _stalled(last, stall_s):
                break
            continue
        now_wall, last = time.time(), time.monotonic()
        first = first or last
        consumer.acknowledge(message)
        result = orjson.loads(message.data())
        if result["id"] in ids:
            duplicates += 1
            continue
        ids.add(result["id"])
        latency_ms = (now_wall - result["ts"]) * 1000
        latencies.append(latency_ms)
        first_ts = first_ts or result["ts"]
        by_second.setdefault(int(result["ts"] - first_ts), []).append(latency_ms)
    ordered = sorted(latencies)
    steady = sorted(v for second, values in by_second.items() if second >= 1 for v in values)
    return {
        # Where in the run the slow ones were: start-up, or spread out.
        "p99_ms_by_second": [
            round(percentile(sorted(values), 99), 1) for _, values in sorted(by_second.items())
        ],
        "count": len(ids),
        "duplicates": duplicates,
        "first": first,
        "last": last,
        "latency_ms": {
            "p50": round(percentile(ordered, 50), 2),
            "p90": round(percentile(ordered, 90), 2),
            "p99": round(percentile(ordered, 99), 2),
            "max": round(ordered[-1], 2) if ordered else None,
            # The first second pays the start of everything (connections, code paths run
            # for the first time, the pacer's own ramp): shown apart, not judged apart.
            "p99_after_first_second": round(percentile(steady, 99), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service-url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True, help="seconds after subscribing")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--wait-ms", type=int, default=10)
    parser.add_argument(
        "--stall-s",
        type=float,
        default=10.0,
        help="give up when results stop arriving for this long (pulsar-lite can stall)",
    )
    args = parser.parse_args()

    pulsar_client = client(args.service_url)
    consumer = _subscribe(pulsar_client, args.topic, args.wait_ms)
    emit("subscribed")
    deadline = time.monotonic() + args.timeout
    if args.latency:
        outcome = time_results(consumer, args.count, deadline, args.stall_s)
    else:
        outcome = count_results(consumer, args.count, deadline, args.stall_s)
    incomplete = outcome["count"] < args.count
    stalled = incomplete and _stalled(outcome["last"], args.stall_s)
    emit("done", timed_out=incomplete, stalled=stalled, **outcome)
    consumer.close()
    pulsar_client.close()
    linger()


if __name__ == "__main__":
    main()
