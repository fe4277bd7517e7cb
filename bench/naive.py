"""The naive baseline: one event at a time, synchronously (consume, POST, publish, ack).

What a first script looks like: the synchronous Pulsar client, one keep-alive httpx
connection, a ``dataframe_records`` request of one row, a blocking publish of the result
(no batching: each send waits for the broker) and then the ack. Prints ``ready`` once
subscribed and ``done`` after ``--count`` events or ``--timeout`` seconds.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pulsar

from bench.payload import client, relay_arguments, shared_consumer
from bench.procs import emit, linger


def relay_one(consumer: Any, producer: Any, http: httpx.Client, url: str) -> bool:
    """Settle one event; False if none arrived within a second."""
    try:
        message = consumer.receive(timeout_millis=1000)
    except pulsar.Timeout:
        return False
    row = orjson.loads(message.data())
    response = http.post(url, json={"dataframe_records": [row]})
    response.raise_for_status()
    (prediction,) = response.json()["predictions"]
    result = {"prediction": prediction, "id": row["id"], "ts": row["ts"]}
    producer.send(orjson.dumps(result), properties={"source_message_id": str(message.message_id())})
    consumer.acknowledge(message)
    return True


def main() -> None:
    parser = relay_arguments(__doc__)
    parser.add_argument("--endpoint-url", required=True, help="the invocations URL")
    args = parser.parse_args()
    pulsar_client = client(args.service_url)
    producer = pulsar_client.create_producer(args.result)
    consumer = shared_consumer(pulsar_client, args.source, args.subscription)
    done = 0
    with httpx.Client(timeout=30) as http:
        emit("ready")
        deadline = time.monotonic() + args.timeout
        while done < args.count and time.monotonic() < deadline:
            done += relay_one(consumer, producer, http, args.endpoint_url)
    emit("done", count=done)
    producer.close()
    consumer.close()
    pulsar_client.close()
    linger()


if __name__ == "__main__":
    main()
