"""What following events across the hop costs: CPU per event of a batch, tracing off and on.

A micro-benchmark of :class:`bridge.processing.BatchProcessor` settling batches of 1 KB
events against an endpoint and a broker that answer at once (in-process fakes, no I/O), so
what is measured is the bridge's own work per batch: encode, request hooks, results,
settling. Rows:

* ``off``: the shipped default, no tracer provider and no client_request_id;
* ``off + client ids``: ``[endpoint] client_request_id = true``;
* ``on``: a tracer provider sampling everything, events carrying ``traceparent``, spans
  handed to a BatchSpanProcessor whose exporter drops them (export itself is off the loop,
  in the processor's thread, and not counted);
* ``on, unsampled``: the same provider at ``sample_ratio`` 0, events without trace context.

Each row is the median of ``--repeat`` runs of ``--batches`` batches of ``--size`` events,
in process CPU time per event::

    .venv/bin/python -m bench.hop_overhead [--batches 300] [--size 100] [--repeat 5]

For scale: the whole bridge spends about 31-39 us of CPU per event at full speed (README).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler

from bench.payload import event_bytes
from bridge.config import load_config
from bridge.config_route import RouteSettings
from bridge.correlation import Correlation
from bridge.errors import BrokerError
from bridge.events import Event, decode
from bridge.gate import RouteGate
from bridge.limiter import EndpointLimiter, FixedLimit
from bridge.observe import Metrics, RouteMetrics
from bridge.processing import BatchProcessor
from bridge.pulsar_publish import Publisher
from bridge.pulsar_source import Received, Source
from bridge.serving import Invocation, ServingClient
from bridge.settle import Settler
from bridge.storm import StormGuard
from bridge.tracing import RouteTracing

_ids = itertools.count()


class _Message:
    """What pulsar.Message offers Received, for a payload and its properties."""

    def __init__(self, data: bytes, properties: dict[str, str]) -> None:
        self._data = data
        self._properties = properties
        self._id = f"(1,{next(_ids)},-1,-1)"

    def data(self) -> bytes:
        return self._data

    def partition_key(self) -> str:
        return ""

    def topic_name(self) -> str:
        return "persistent://public/default/events"

    def message_id(self) -> str:
        return self._id

    def properties(self) -> dict[str, str]:
        return self._properties


class _Endpoint:
    url = "http://127.0.0.1:1/serving-endpoints/m/invocations"

    async def invoke(self, body: bytes, headers: Any = None) -> Invocation:
        rows = len(orjson.loads(body)["dataframe_records"])
        return Invocation({"predictions": [0.5] * rows}, "m-1", 0.001, "req-1")


class _Broker:
    def ack(self, received: Any) -> None:
        pass

    def nack(self, received: Any) -> None:
        pass

    async def publish_all(self, messages: Sequence[Any]) -> list[BrokerError | None]:
        return [None] * len(messages)


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _route(client_request_id: bool) -> RouteSettings:
    directory = Path(tempfile.mkdtemp(prefix="hop-overhead-"))
    (directory / "routes").mkdir()
    (directory / "bridge.toml").write_text(
        '[databricks]\nhost = "http://127.0.0.1:1"\nauth_type = "none"\n'
    )
    (directory / "routes" / "r.toml").write_text(
        '[source]\ntopics = ["events"]\nsubscription = "s"\n'
        f'[endpoint]\nname = "m"\nclient_request_id = {str(client_request_id).lower()}\n'
        '[result]\ntopic = "results"\npassthrough = ["id"]\n'
    )
    return load_config(directory).routes[0]


def _processor(route: RouteSettings, tracing: RouteTracing | None) -> BatchProcessor:
    broker = _Broker()
    metrics = RouteMetrics(Metrics(), route.name)
    return BatchProcessor(
        route,
        results=cast(Publisher, broker),
        settler=Settler(route.name, cast(Source, broker), cast(Publisher, broker), metrics),
        serving=cast(ServingClient, _Endpoint()),
        limiter=EndpointLimiter("m", FixedLimit(4)),
        gate=RouteGate(failures_to_pause=10, probe_initial_s=0.01, probe_max_s=0.1),
        storm=StormGuard(0, 1.0),
        metrics=metrics,
        correlation=Correlation(route, metrics=metrics, tracing=tracing),
    )


def _batches(count: int, size: int, traced: bool) -> list[list[Event]]:
    payloads = [event_bytes(i) for i in range(size)]
    made = []
    for _ in range(count):
        batch = []
        for data in payloads:
            properties = (
                {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
                if traced
                else {}
            )
            batch.append(decode(Received(_Message(data, properties))))
        made.append(batch)
    return made


def _provider(sampler: Sampler) -> TracerProvider:
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1 << 16))
    return provider


async def _settle(processor: BatchProcessor, batches: list[list[Event]]) -> float:
    started = time.process_time()
    for batch in batches:
        await processor.process(batch)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # The per-batch log line is not what is measured here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    plain, with_ids = _route(False), _route(True)
    sampled, unsampled = _provider(ALWAYS_ON), _provider(ALWAYS_OFF)
    rows = {
        "off": (plain, None, False),
        "off + client ids": (with_ids, None, False),
        "on": (plain, RouteTracing(sampled.get_tracer("bench"), plain), True),
        "on, unsampled": (plain, RouteTracing(unsampled.get_tracer("bench"), plain), False),
    }
    runs: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeat):  # rows interleaved, so drift on a shared machine spreads
        for name, (route, tracing, traced) in rows.items():
            batches = _batches(args.batches, args.size, traced)
            seconds = asyncio.run(_settle(_processor(route, tracing), batches))
            runs[name].append(seconds / (args.batches * args.size) * 1e6)
    base = statistics.median(runs["off"])
    print(f"{'row':<18} {'us/event':>9} {'vs off':>8}   runs")
    for name, values in runs.items():
        median = statistics.median(values)
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:<18} {median:>9.2f} {median / base:>7.2f}x   {shown}")
    sampled.shutdown()
    unsampled.shutdown()


if __name__ == "__main__":
    main()
