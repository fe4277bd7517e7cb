"""End-to-end test parts: the bridge as a separate process, config dirs, topic readers.

The bridge runs as in production (``python -m bridge run -c DIR``) and its JSON log lines
are read from its stdout by a reader thread, so a test waits for a log event instead of
sleeping. Results and dead letters are read back with the synchronous Pulsar client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pulsar
import tomli_w

LogLine = dict[str, Any]


def unique_topic(stem: str) -> str:
    return f"persistent://public/default/{stem}-{uuid.uuid4().hex[:10]}"


@dataclass
class Topics:
    source: str = field(default_factory=lambda: unique_topic("events"))
    result: str = field(default_factory=lambda: unique_topic("results"))
    dlq: str = field(default_factory=lambda: unique_topic("dlq"))
    subscription: str = field(default_factory=lambda: f"bridge-{uuid.uuid4().hex[:8]}")


def write_config(
    directory: Path,
    *,
    service_url: str,
    databricks: Mapping[str, Any],
    routes: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``bridge.toml`` and ``routes/<name>.toml``; return the directory."""
    (directory / "routes").mkdir(parents=True, exist_ok=True)
    bridge: dict[str, Any] = {
        "pulsar": {"service_url": service_url},
        "databricks": dict(databricks),
        "observe": {"log_format": "json", "log_level": "info", "http_bind": "127.0.0.1:0"},
        "daemon": {"drain_grace_s": 10},
    }
    for section, values in (extra or {}).items():
        bridge.setdefault(section, {}).update(values)
    (directory / "bridge.toml").write_text(tomli_w.dumps(bridge))
    for name, route in routes.items():
        (directory / "routes" / f"{name}.toml").write_text(tomli_w.dumps(dict(route)))
    return directory


def route_config(topics: Topics, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """A route reading ``topics.source``; keyword sections override the defaults here."""
    route: dict[str, Any] = {
        "source": {"topics": [topics.source], "subscription": topics.subscription},
        "endpoint": {"name": "fraud-model"},
        "batch": {"max_events": 50, "linger_ms": 10},
        "result": {"topic": topics.result, "passthrough": ["id"]},
        "failure": {
            "dead_letter_topic": topics.dlq,
            "nack_delay_ms": 200,
            "backoff_initial_ms": 10,
            "backoff_max_ms": 100,
        },
    }
    for section, values in sections.items():
        route.setdefault(section, {}).update(values)
    return route


class BridgeProcess:
    """``pulsar-bridge run`` in a child process, with its log lines collected."""

    def __init__(self, config_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.config_dir = config_dir
        self.env = {**os.environ, **(env or {})}
        self.lines: list[LogLine] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> BridgeProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(self.config_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            with self._changed:
                self.raw.append(raw)
                try:
                    parsed = json.loads(raw)
                except json.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    self.lines.append(parsed)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def events(self, name: str) -> list[LogLine]:
        with self._changed:
            return [line for line in self.lines if line.get("event") == name]

    def wait_for(
        self, name: str, predicate: Callable[[LogLine], bool] = lambda _: True, timeout: float = 30
    ) -> LogLine:
        """Block until a log line with event ``name`` matching ``predicate`` appears."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if line.get("event") == name and predicate(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self._process is not None
                    and self._process.poll() is not None
                    and self._reader_done()
                ):
                    tail = "".join(self.raw[-20:])
                    raise AssertionError(
                        f"no {name!r} log line within {timeout}s; last output:\n{tail}"
                    )
                self._changed.wait(remaining)

    def _reader_done(self) -> bool:
        return self._reader is not None and not self._reader.is_alive()

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_for("ready", timeout=timeout)

    def signal(self, sig: int) -> None:
        assert self._process is not None
        self._process.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self._process is not None
        code = self._process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; the exit code."""
        if self._process is None or self._process.poll() is not None:
            return self._process.returncode if self._process else 0
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL if still running, then release the pipe."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def tail(self, lines: int = 40) -> str:
        with self._changed:
            return "".join(self.raw[-lines:])

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.raw)


@dataclass(frozen=True)
class Received:
    data: bytes
    properties: dict[str, str]
    key: str | None
    message_id: str

    # Parsed once: read_until predicates look at every message read so far after each new
    # one, and parsing them all again each time made a 10,000-event wait quadratic in CPU.
    @cached_property
    def json(self) -> Any:
        return json.loads(self.data)


class DistinctIds:
    """How many distinct event ids a growing list of results holds (incrementally: a
    ``read_until`` predicate runs after every message, over everything read so far)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._seen = 0

    def __call__(self, messages: list[Received]) -> int:
        for m in messages[self._seen :]:
            self._ids.add(m.json["id"])
        self._seen = len(messages)
        return len(self._ids)


class TopicReader:
    """Reads a topic from its beginning with its own subscription.

    A message the broker delivers to this reader twice (same message id: pulsar-lite does
    that over large backlogs) is kept once, so what the tests count is what the bridge
    published, not how often the broker handed it to the test.
    """

    def __init__(self, client: pulsar.Client, topic: str) -> None:
        self._consumer = client.subscribe(
            topic,
            f"reader-{uuid.uuid4().hex[:8]}",
            initial_position=pulsar.InitialPosition.Earliest,
        )
        self.messages: list[Received] = []
        self._seen: set[str] = set()

    def _take(self, msg: pulsar.Message) -> None:
        message_id = str(msg.message_id())
        if message_id not in self._seen:
            self._seen.add(message_id)
            self.messages.append(
                Received(msg.data(), msg.properties(), msg.partition_key() or None, message_id)
            )
        self._consumer.acknowledge(msg)

    def read_until(
        self, done: Callable[[list[Received]], bool], timeout: float = 60
    ) -> list[Received]:
        """Receive until ``done(messages)`` or ``timeout``; return everything read so far."""
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            try:
                msg = self._consumer.receive(timeout_millis=min(remaining_ms, 1000))
            except pulsar.Timeout:
                continue
            self._take(msg)
        return self.messages

    def read_quiet(self, quiet_ms: int = 1000) -> list[Received]:
        """Read until nothing arrives for ``quiet_ms`` (to check that nothing more comes)."""
        while True:
            try:
                msg = self._consumer.receive(timeout_millis=quiet_ms)
            except pulsar.Timeout:
                return self.messages
            self._take(msg)

    def close(self) -> None:
        self._consumer.close()


def publish(
    client: pulsar.Client,
    topic: str,
    payloads: Iterable[bytes],
    *,
    key: Callable[[int], str | None] = lambda _i: None,
) -> list[str]:
    """Publish payloads in order; return their message ids as the bridge prints them."""
    producer = client.create_producer(topic, block_if_queue_full=True, batching_enabled=True)
    ids: list[str] = []
    futures: list[tuple[int, threading.Event]] = []
    lock = threading.Lock()
    results: dict[int, str] = {}

    def callback_for(index: int, done: threading.Event) -> Callable[[Any, Any], None]:
        def callback(res: Any, msg_id: Any) -> None:
            with lock:
                results[index] = str(msg_id)
            done.set()

        return callback

    for i, payload in enumerate(payloads):
        done = threading.Event()
        futures.append((i, done))
        k = key(i)
        if k is None:
            producer.send_async(payload, callback_for(i, done))
        else:
            producer.send_async(payload, callback_for(i, done), partition_key=k)
    producer.flush()
    for i, done in futures:
        if not done.wait(30):
            raise AssertionError(f"publish of message {i} not confirmed")
        ids.append(results[i])
    producer.close()
    return ids


def secret_file(path: Path, text: str) -> Path:
    """``text`` at ``path``, readable by its owner only (as the bridge expects of secrets)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def relay(
    client: pulsar.Client, topics: Topics, reader: TopicReader, start: int, count: int
) -> int:
    """Publish events ``start..start+count``; the number of results read so far."""
    payloads = [json.dumps(event(i)).encode() for i in range(start, start + count)]
    publish(client, topics.source, payloads)
    return len(reader.read_until(lambda ms: len(ms) >= start + count))


def key_shared_route(topics: Topics) -> dict[str, Any]:
    """A key_shared route of small batches whose failed requests are held in place, not
    handed back: one attempt, a circuit that never opens, 50 rounds; results carry ``seq``."""
    return route_config(
        topics,
        source={"subscription_type": "key_shared"},
        endpoint={"max_in_flight": 4},
        batch={"max_events": 25},
        result={"passthrough": ["id", "seq"]},
        failure={"attempts": 1, "circuit_failures": 10_000, "max_redeliveries": 50},
    )


def seqs_by_key(messages: Iterable[Received]) -> dict[str, list[int]]:
    """The ``seq`` of each result, per message key, in the order the results were read."""
    per_key: dict[str, list[int]] = {}
    for message in messages:
        per_key.setdefault(message.key or "", []).append(message.json["seq"])
    return per_key


def event(i: int, **extra: Any) -> dict[str, Any]:
    """A sample transaction with numeric features the emulator's model scores."""
    return {
        "id": f"e{i}",
        "amount": (i * 37) % 500 / 10,
        "age": 20 + i % 50,
        "merchant": "m",
        **extra,
    }
