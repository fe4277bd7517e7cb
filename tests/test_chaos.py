"""The zero-loss chaos suite: >= 10,000 events through bridge processes under fire.

One scenario, driven by how far the stream has got rather than by the clock: random 429s
(with and without Retry-After), 503 bursts, an endpoint outage, slow responses, tokens that
expire every few seconds and a revocation, ~1% poison events, non-JSON events and an
oversized one; a broker restart, a SIGTERM followed by a restart, and a SIGKILL mid-batch
followed by a restart. At the end every event has a correct result or exactly one
dead-letter entry with a reason, and no good event was dead-lettered.

Runs on both brokers. On pulsar-lite the test gets a broker of its own (it restarts it,
and restarts it once more after the SIGKILL, a pulsar-lite limit); on Apache Pulsar it
restarts the session's broker in place, and the SIGKILL step needs no broker restart.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulsar
import pytest

from bridge.embedded import EmbeddedBroker
from bridge.emulator import EmulatorServer, EmulatorState, score
from tests.conftest import PULSAR_LITE, Broker, broker_kind
from tests.support.harness import (
    BridgeProcess,
    Topics,
    event,
    publish,
    route_config,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

EVENTS = 10_000
CHUNKS = 10
POISON_EVERY = 97  # ~1%
CLIENT_ID, CLIENT_SECRET = "chaos-sp", "chaos-secret"


class Tally:
    """Reads a topic on a background thread and counts what arrived, by event id."""

    def __init__(self, client: pulsar.Client, topic: str) -> None:
        self._consumer = client.subscribe(
            topic, "chaos-tally", initial_position=pulsar.InitialPosition.Earliest
        )
        self.by_id: dict[str, list[dict[str, Any]]] = {}
        self.raw: list[tuple[bytes, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._consumer.receive(timeout_millis=200)
            except pulsar.Timeout:
                continue
            data, props = msg.data(), msg.properties()
            with self._changed:
                self.raw.append((data, props))
                try:
                    body = json.loads(data)
                    key = str(body["id"]) if isinstance(body, dict) and "id" in body else None
                except ValueError:
                    key = None
                if key is not None:
                    self.by_id.setdefault(key, []).append(
                        {"body": body, "props": props, "message_id": str(msg.message_id())}
                    )
                self._changed.notify_all()
            self._consumer.acknowledge(msg)

    def distinct(self) -> int:
        with self._changed:
            return len(self.by_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def wait_settled(results: Tally, dead: Tally, target: int, timeout: float = 120) -> None:
    """Block until ``target`` distinct events have a result or a dead letter."""
    deadline = time.monotonic() + timeout
    while results.distinct() + dead.distinct() < target:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {results.distinct()} results + {dead.distinct()} dead letters "
                f"of {target} after {timeout}s"
            )
        with results._changed:
            results._changed.wait(0.5)


@pytest.fixture
def chaos_broker(broker: Broker, tmp_path: Path) -> Iterator[Broker]:
    """pulsar-lite: a broker of the test's own; Apache Pulsar: the session's, restarted in place
    (it keeps its data and ports, and the other tests' clients reconnect)."""
    if broker_kind(broker) == PULSAR_LITE:
        with EmbeddedBroker(tmp_path / "broker") as own:
            yield own
    else:
        yield broker


@pytest.mark.timeout(600)
def test_zero_loss_under_chaos(chaos_broker: Broker, tmp_path: Path) -> None:
    started = time.monotonic()
    topics = Topics()
    state = EmulatorState(clients={CLIENT_ID: CLIENT_SECRET}, token_ttl_s=4)
    state.faults.update({"rate_429": 0.03, "latency_ms": 2, "seed": 2026}, now=0)
    client = pulsar.Client(chaos_broker.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    results, dead = Tally(client, topics.result), Tally(client, topics.dlq)

    rows = [event(i, _poison=(i % POISON_EVERY == 50)) for i in range(EVENTS)]
    poison = {r["id"] for r in rows if r["_poison"]}
    bad_payloads = [b"{not json", b"[1, 2]", b'"a string"', b"\xc3\x28", b"null"]
    oversized = event(EVENTS, blob="z" * 40_000)

    with EmulatorServer(state) as emulator:
        config = write_config(
            tmp_path / "config",
            service_url=chaos_broker.url,
            databricks={
                "host": emulator.url,
                "client_id": CLIENT_ID,
                "client_secret": "env:CHAOS_SECRET",
                "token_leeway_s": 1,
            },
            routes={
                "fraud": route_config(
                    topics,
                    endpoint={"max_in_flight": 4, "max_payload_bytes": 30_000, "timeout_s": 10},
                    batch={"max_events": 50, "linger_ms": 10},
                    failure={
                        "attempts": 3,
                        "max_redeliveries": 30,
                        "circuit_failures": 8,
                        "circuit_probe_max_s": 0.5,
                        "retry_after_max_s": 1,
                    },
                )
            },
            extra={"daemon": {"drain_grace_s": 5}},
        )
        env = {"CHAOS_SECRET": CLIENT_SECRET}
        runs: list[BridgeProcess] = []

        def start() -> BridgeProcess:
            bridge = BridgeProcess(config, env=env).start()
            runs.append(bridge)
            bridge.wait_ready(60)
            return bridge

        def feed(chunk: int) -> None:
            size = EVENTS // CHUNKS
            part = rows[chunk * size : (chunk + 1) * size]
            publish(client, topics.source, [json.dumps(r).encode() for r in part])

        def settled_at(fraction: float) -> None:
            wait_settled(results, dead, int(EVENTS * fraction))

        try:
            bridge = start()
            feed(0)
            publish(client, topics.source, [*bad_payloads, json.dumps(oversized).encode()])
            feed(1)
            settled_at(0.1)
            state.faults.update({"fail_next": 25, "fail_status": 503}, now=0)  # a 503 burst
            feed(2)
            settled_at(0.2)
            state.faults.update({"outage_for_s": 4}, now=state.clock())  # endpoint down
            feed(3)
            settled_at(0.3)
            state.revoke_all()  # a token revocation
            state.faults.update({"retry_after_s": 1, "latency_ms": 30}, now=0)  # slow + Retry-After
            feed(4)
            settled_at(0.4)
            chaos_broker.restart()  # broker loss: the process must heal by itself
            state.faults.update({"retry_after_s": None, "latency_ms": 2}, now=0)
            feed(5)
            settled_at(0.5)
            assert bridge.events("stopping") == [], "no restart needed so far"

            feed(6)
            bridge.signal(signal.SIGTERM)  # SIGTERM mid-stream, then a restart
            code = bridge.wait_exit(60)
            assert code == 0, f"SIGTERM exit {code}:\n{bridge.tail()}"
            if broker_kind(chaos_broker) == PULSAR_LITE:
                # pulsar-lite sometimes keeps the messages a closed consumer had prefetched
                # assigned to it, stalling the subscription (seen ~1 run in 4); a broker
                # restart releases them. Apache Pulsar redelivers them by itself.
                chaos_broker.restart()
            bridge = start()
            settled_at(0.65)

            feed(7)
            bridge.wait_for("batch", timeout=60)
            bridge.kill()  # SIGKILL mid-batch, then a restart
            if broker_kind(chaos_broker) == PULSAR_LITE:
                # pulsar-lite can keep a SIGKILLed consumer registered and stall the
                # subscription (a known pulsar-lite limit); a broker restart clears it.
                # Apache Pulsar runs the same step without this crutch.
                chaos_broker.restart()
            bridge = start()
            feed(8)
            feed(9)
            # Every event with an id: the 10,000 rows plus the oversized one (its dead letter
            # counts among the distinct ids, so waiting for 10,000 would stop one short).
            wait_settled(results, dead, EVENTS + 1)
            # The non-JSON and oversized events settle too (by their dead letters).
            deadline = time.monotonic() + 60
            while len(dead.raw) < len(poison) + len(bad_payloads) + 1:
                assert time.monotonic() < deadline, f"dead letters: {len(dead.raw)}"
                with dead._changed:
                    dead._changed.wait(0.5)
            code = bridge.stop(60)
            assert code == 0, f"SIGTERM exit {code}:\n{bridge.tail()}"
        finally:
            for run in runs:
                run.kill()
            results.close()
            dead.close()
            client.close()

    # ---------------------------------------------------------------- the verdict
    good = [r for r in rows if r["id"] not in poison]
    missing = [r["id"] for r in good if r["id"] not in results.by_id]
    assert missing == [], f"{len(missing)} good events have no result"
    wrong = [
        r["id"]
        for r in good
        if any(x["body"]["prediction"] != score(r) for x in results.by_id[r["id"]])
    ]
    assert wrong == [], f"wrong predictions for {wrong[:5]}"
    dead_good = [i for i in dead.by_id if i not in poison and i != oversized["id"]]
    assert dead_good == [], f"good events dead-lettered: {dead_good[:5]}"
    for event_id in poison:
        entries = dead.by_id.get(event_id, [])
        assert len(entries) >= 1, f"poison {event_id} not dead-lettered"
        assert all(e["props"]["error"].startswith("HTTP 400") for e in entries)
    assert "exceeds the payload limit" in dead.by_id[oversized["id"]][0]["props"]["error"]
    bad_dead = {data for data, _ in dead.raw if data in bad_payloads}
    assert bad_dead == set(bad_payloads)
    assert all("error" in props for _, props in dead.raw)

    # A duplicate is a second result *message* for an event (the bridge scored it twice);
    # the same message delivered twice to this reader is the broker's doing, not ours.
    duplicates = sum(len({x["message_id"] for x in v}) - 1 for v in results.by_id.values())
    reader_redeliveries = sum(
        len(v) - len({x["message_id"] for x in v}) for v in results.by_id.values()
    )
    dead_duplicates = sum(len(v) - 1 for v in dead.by_id.values())
    status = state.counters.requests_by_status
    summary = {
        "events": EVENTS + len(bad_payloads) + 1,
        "results": sum(len(v) for v in results.by_id.values()),
        "distinct_results": len(results.by_id),
        "duplicate_results": duplicates,
        "reader_redeliveries": reader_redeliveries,
        "dead_lettered": len(dead.raw),
        "duplicate_dead_letters": dead_duplicates,
        "requests": sum(status.values()),
        "requests_by_status": dict(sorted(status.items())),
        "tokens_issued": state.counters.tokens_issued,
        "retries": sum(len(run.events("request_retry")) for run in runs),
        "bridge_runs": len(runs),
        "duplicates_by_chunk": dict(
            sorted(
                Counter(
                    int(i[1:]) * CHUNKS // EVENTS
                    for i, v in results.by_id.items()
                    for _ in range(len({x["message_id"] for x in v}) - 1)
                ).items()
            )
        ),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print("\nchaos summary:", json.dumps(summary))
    assert status[429] > 0
    assert status[503] > 0
    assert status[401] > 0, "the revoked token was refused and refreshed"
    assert Counter(line["event"] for run in runs for line in run.lines)["route_paused"] >= 1
