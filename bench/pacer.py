"""A paced producer for the latency scenario: ``--rate`` events/s for ``--count`` events.

Each event carries ``ts``, the wall-clock time it is handed to the client, so the result
reader can compute publish -> result latency. Sends are scheduled against the start time
(catching up after a late wake-up rather than drifting), in bursts of at most 1 ms worth.
The producer batches with a 1 ms delay: that adds at most 1 ms to every measured latency
and keeps the producer's own CPU low, as does keeping a Python thread state on the
client's I/O thread for the send callbacks (:class:`bridge.pulsar_publish.CallbackThreads`):
at half the bridge's rate this process otherwise took 0.4 of the machine's two cores from
the process being measured. Prints ``ready`` once connected and ``done``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import pulsar

from bench.payload import batching_producer, client, event_bytes
from bench.procs import emit, linger
from bridge.pulsar_publish import CallbackThreads


def pace(producer: Any, rate: float, count: int) -> float:
    """Send ``count`` events at ``rate`` per second; the seconds it took."""
    failures: list[object] = []
    pin = CallbackThreads().pin

    def on_sent(result: Any, _message_id: Any) -> None:
        pin()
        if result != pulsar.Result.Ok:
            failures.append(result)

    started = time.monotonic()
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            producer.send_async(event_bytes(sent, time.time()), on_sent)
            sent += 1
        time.sleep(0.0005)
    producer.flush()
    if failures:
        raise RuntimeError(f"{len(failures)} paced sends failed ({failures[0]})")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service-url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()

    pulsar_client = client(args.service_url)
    producer = batching_producer(pulsar_client, args.topic, delay_ms=1)
    emit("ready")
    seconds = pace(producer, args.rate, args.count)
    emit("done", count=args.count, seconds=round(seconds, 3))
    producer.close()
    pulsar_client.close()
    linger()


if __name__ == "__main__":
    main()
