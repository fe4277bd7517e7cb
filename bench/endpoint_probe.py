"""What the endpoint itself allows: a bare httpx client, no Pulsar, ``--concurrency``
requests of ``--batch`` events at a time, for ``--requests`` requests.

The 50 ms scenario is held against Little's law, ``max_in_flight * batch / latency``,
which assumes every request takes exactly the endpoint's latency. Each round trip also
costs the HTTP stack on both sides and the emulator's own scheduling; this client pays
the same with nothing else to do, so the bridge's rate over this one says how full it
keeps the pipe. Prints ``ready`` and then ``done`` with ``count`` (events), ``seconds``
and the requests' ``p50_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import orjson

from bench.payload import event_bytes
from bench.procs import emit, linger


async def probe(url: str, concurrency: int, requests: int, batch: int) -> dict[str, float]:
    rows = [orjson.loads(event_bytes(i)) for i in range(batch)]
    body = orjson.dumps({"dataframe_records": rows})
    headers = {"Content-Type": "application/json"}
    remaining = requests
    took: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await http.post(url, content=body, headers=headers)  # connect once, as the bridge has

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                sent = time.monotonic()
                response = await http.post(url, content=body, headers=headers)
                response.raise_for_status()
                took.append(time.monotonic() - sent)

        emit("ready")
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.monotonic() - started
    return {
        "count": len(took) * batch,
        "seconds": round(seconds, 4),
        "p50_ms": round(statistics.median(took) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint-url", required=True, help="the invocations URL")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args()
    outcome = asyncio.run(probe(args.endpoint_url, args.concurrency, args.requests, args.batch))
    emit("done", **outcome)
    linger()


if __name__ == "__main__":
    main()
