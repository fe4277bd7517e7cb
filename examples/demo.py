"""`make demo`: the whole path on embedded parts, then a summary.

    python examples/demo.py [fraud|spam] [--events N]

Starts a pulsar-lite broker and the Databricks emulator on loopback, runs the bridge as a
separate process on the example's config (``examples/<name>``, with the broker and emulator
addresses filled in), publishes a few thousand sample events plus two malformed ones, shows
progress while results flow, prints a few results and a summary, and stops everything.
It needs only the runtime and the ``embedded`` extra (``pip install -e '.[embedded]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulsar

from bridge.embedded import EmbeddedBroker
from bridge.emulator import EmulatorServer, EmulatorState

HERE = Path(__file__).resolve().parent
SECRET = "demo-secret-not-for-production"
# Published after the sample events; each must come out of the dead-letter topic.
MALFORMED = (b"this is not JSON", b'["a", "list", "is", "not", "an", "event"]')


def transactions(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": f"tx-{i:05d}",
            "card": f"4111-{rng.randrange(500):04d}",
            "amount": round(rng.lognormvariate(3.5, 1.2), 2),
            "merchant_risk": round(rng.random(), 3),
            "hour": rng.randrange(24),
            "distance_km": round(rng.expovariate(0.05), 1),
        }
        for i in range(n)
    ]


def chat_messages(n: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ["deploy", "lunch", "FREE", "review", "prize", "meeting", "crypto", "thanks"]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12)))
        out.append(
            {
                "message_id": f"m-{i:05d}",
                "channel": rng.choice(["general", "random", "support"]),
                "text": text,
                "links": rng.choice([0, 0, 0, 1, 2]),
                "exclamations": text.count("FREE") + rng.randrange(2),
                "caps_ratio": round(sum(c.isupper() for c in text) / len(text), 3),
                "account_age_days": rng.randrange(0, 2000),
            }
        )
    return out


@dataclass(frozen=True)
class Example:
    """What the demo needs to know about one ``examples/<name>`` config."""

    name: str
    client_id: str
    secret_env: str
    endpoint: str
    id_field: str
    key_field: str | None
    generate: Callable[[int], list[dict[str, Any]]]

    @property
    def directory(self) -> Path:
        return HERE / self.name


EXAMPLES = {
    "fraud": Example(
        "fraud", "fraud-sp", "FRAUD_SP_SECRET", "fraud-model", "id", "card", transactions
    ),
    "spam": Example(
        "spam", "spam-sp", "SPAM_SP_SECRET", "spam-classifier", "message_id", None, chat_messages
    ),
}


def config_for(
    example: Example, workdir: Path, broker: EmbeddedBroker, emulator: EmulatorServer
) -> Path:
    """Copy examples/<name>, pointing it at the embedded broker and the emulator."""
    config = workdir / "config"
    shutil.copytree(example.directory, config, ignore=shutil.ignore_patterns("*.jsonl"))
    bridge = tomllib.loads((config / "bridge.toml").read_text())
    bridge["pulsar"]["service_url"] = broker.url
    bridge["databricks"]["host"] = emulator.url
    bridge["observe"] = {"log_format": "json", "http_bind": "127.0.0.1:0"}
    (config / "bridge.toml").write_text(toml_tables(bridge))
    return config


def toml_tables(tables: dict[str, dict[str, Any]]) -> str:
    """TOML for tables of strings, numbers and booleans: all bridge.toml needs here (the
    demo installs no TOML writer). A JSON string is a valid TOML basic string."""
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        for key, value in table.items():
            if not isinstance(value, str | bool | int | float):
                raise TypeError(f"{name}.{key}: {type(value).__name__} is not written here")
            out.append(f"{key} = {json.dumps(value)}")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", nargs="?", default="fraud", choices=sorted(EXAMPLES))
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()
    example = EXAMPLES[args.example]
    workdir = Path(tempfile.mkdtemp(prefix="pulsar-bridge-demo-"))
    (route_file,) = (example.directory / "routes").glob("*.toml")
    route = tomllib.loads(route_file.read_text())
    source, results_topic = route["source"]["topics"][0], route["result"]["topic"]
    dlq_topic = route["failure"]["dead_letter_topic"]
    state = EmulatorState(
        clients={example.client_id: SECRET},
        endpoints=frozenset({example.endpoint}),
        token_ttl_s=3600,
    )
    print(f"demo workspace: {workdir}")
    with EmbeddedBroker(workdir / "broker") as broker, EmulatorServer(state) as emulator:
        print(f"pulsar-lite broker  {broker.url}")
        print(f"Databricks emulator {emulator.url}")
        config = config_for(example, workdir, broker, emulator)
        client = pulsar.Client(broker.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        results = client.subscribe(
            results_topic, "demo-reader", initial_position=pulsar.InitialPosition.Earliest
        )
        dead = client.subscribe(
            dlq_topic, "demo-reader", initial_position=pulsar.InitialPosition.Earliest
        )
        log = (workdir / "bridge.log").open("w")
        bridge = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, example.secret_env: SECRET},
        )
        try:
            events = example.generate(args.events)
            code = relay(example, events, client, bridge, results, dead, source, workdir)
        finally:
            if bridge.poll() is None:
                bridge.send_signal(signal.SIGTERM)
                bridge.wait(30)
            log.close()
            client.close()
    if code == 0:
        shutil.rmtree(workdir, ignore_errors=True)  # kept on failure, for its bridge.log
    return code


def relay(
    example: Example,
    events: list[dict[str, Any]],
    client: pulsar.Client,
    bridge: subprocess.Popen[bytes],
    results: pulsar.Consumer,
    dead: pulsar.Consumer,
    source: str,
    workdir: Path,
) -> int:
    total = len(events)
    producer = client.create_producer(source, block_if_queue_full=True)
    started = time.monotonic()
    for ev in events:
        key = str(ev[example.key_field]) if example.key_field else None
        producer.send_async(json.dumps(ev).encode(), None, partition_key=key)
    for malformed in MALFORMED:
        producer.send_async(malformed, None)
    producer.flush()
    print(
        f"published {total} {example.name} events and {len(MALFORMED)} malformed ones "
        f"in {time.monotonic() - started:.2f}s"
    )

    read = read_results(example, total, results, bridge)
    if read is None:
        print(f"bridge exited early with {bridge.returncode}; see {workdir / 'bridge.log'}")
        return 1
    got, first_result = read
    flowing = time.monotonic() - (first_result or started)
    dead_letters = read_dead_letters(dead)
    elapsed = time.monotonic() - started

    print("\na few results:")
    for tx_id in list(got)[:3]:
        r = got[tx_id]
        print(
            f"  {json.dumps(r['result'])}  served_model={r['served_model']} "
            f"source_message_id={r['source_message_id']}"
        )
    print("dead-lettered:")
    for data, error in dead_letters.items():
        print(f"  {data!r}: {error}")
    bridge.send_signal(signal.SIGTERM)
    code = bridge.wait(30)
    rate = len(got) / flowing if flowing > 0 else 0.0
    print(
        f"\nsummary: events in {total + len(MALFORMED)}, results out {len(got)}, "
        f"dead-lettered {len(dead_letters)}, elapsed {elapsed:.2f}s, "
        f"{rate:,.0f} events/s while flowing; bridge exit code {code}"
    )
    ok = len(got) == total and set(dead_letters) == set(MALFORMED) and code == 0
    print("demo OK" if ok else f"demo FAILED; see {workdir / 'bridge.log'}")
    return 0 if ok else 1


def read_results(
    example: Example, total: int, results: pulsar.Consumer, bridge: subprocess.Popen[bytes]
) -> tuple[dict[str, dict[str, Any]], float | None] | None:
    """Results by event id and when the first came; None if the bridge exited meanwhile.

    Progress shows at each fifth of the way and at the end, however fast results come.
    """
    got: dict[str, dict[str, Any]] = {}
    first_result = None
    shown = 0
    deadline = time.monotonic() + 120
    while len(got) < total and time.monotonic() < deadline:
        if bridge.poll() is not None:
            return None
        try:
            msg = results.receive(timeout_millis=500)
        except pulsar.Timeout:
            continue
        first_result = first_result or time.monotonic()
        body = json.loads(msg.data())
        got[body[example.id_field]] = {"result": body, **msg.properties()}
        results.acknowledge(msg)
        if len(got) * 5 // total > shown or len(got) == total:
            shown = len(got) * 5 // total
            print(f"  ... {len(got):>5}/{total} results")
    return got, first_result


def read_dead_letters(dead: pulsar.Consumer) -> dict[bytes, str]:
    """The error of each distinct dead-lettered payload.

    Keyed by payload: the broker may deliver one dead letter twice, which must not stand
    in for the other one.
    """
    dead_letters: dict[bytes, str] = {}
    while len(dead_letters) < len(MALFORMED):
        try:
            msg = dead.receive(timeout_millis=5000)
        except pulsar.Timeout:
            break
        dead_letters[msg.data()] = msg.properties()["error"]
        dead.acknowledge(msg)
    return dead_letters


if __name__ == "__main__":
    sys.exit(main())
