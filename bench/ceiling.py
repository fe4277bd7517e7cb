"""The ceiling: a bare Python relay with no HTTP (receive -> send_async -> ack on confirm).

This is the loop the reference machine moved ~30k events/s with: the synchronous client,
a batching producer like the bridge's result publisher (1000 messages / 5 ms) and the
source event acked from the send callback once the broker has the copy. The payload is
forwarded unchanged. Prints ``ready`` once subscribed and ``done`` after ``--count``
events are confirmed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pulsar

from bench.payload import batching_producer, client, relay_arguments, shared_consumer
from bench.procs import emit, linger


def relay(consumer: Any, producer: Any, count: int, deadline: float) -> int:
    """Relay ``count`` events (or until ``deadline``); the number confirmed."""
    confirmed = [0]
    all_confirmed = threading.Event()
    lock = threading.Lock()

    def on_sent(message: Any, result: Any, _message_id: Any) -> None:
        if result == pulsar.Result.Ok:
            consumer.acknowledge(message)
        with lock:
            confirmed[0] += 1
            if confirmed[0] >= count:
                all_confirmed.set()

    received = 0
    while received < count and time.monotonic() < deadline:
        try:
            message = consumer.receive(timeout_millis=500)
        except pulsar.Timeout:
            continue
        producer.send_async(message.data(), lambda r, i, m=message: on_sent(m, r, i))
        received += 1
    producer.flush()
    all_confirmed.wait(max(0.0, deadline - time.monotonic()))
    return confirmed[0]


def main() -> None:
    args = relay_arguments(__doc__).parse_args()
    pulsar_client = client(args.service_url)
    producer = batching_producer(pulsar_client, args.result, delay_ms=5)
    consumer = shared_consumer(
        pulsar_client, args.source, args.subscription, receiver_queue_size=1000
    )
    emit("ready")
    confirmed = relay(consumer, producer, args.count, time.monotonic() + args.timeout)
    emit("done", count=confirmed)
    producer.close()
    consumer.close()
    pulsar_client.close()
    linger()


if __name__ == "__main__":
    main()
