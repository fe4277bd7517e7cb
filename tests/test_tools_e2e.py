"""The operator commands end to end: send, tail, replay, and `run`'s JSON-only stdout.

Each command runs as its own process (``python -m bridge <command>``) against a real
broker, on both tiers; what it did is read back from the broker, not from its output
alone. Absence is proven with a marker sent after the fact (a topic read up to the
marker holds nothing else), never by waiting for silence.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pulsar
import pytest

from bridge.emulator import EmulatorServer
from tests.conftest import APACHE_ONLY, CLIENT_ID, CLIENT_SECRET, BridgeFactory, Broker
from tests.support.apache import ApachePulsarBroker
from tests.support.harness import (
    BridgeProcess,
    Received,
    TopicReader,
    Topics,
    event,
    route_config,
    write_config,
)

pytestmark = pytest.mark.integration

DEAD_LETTER_KEYS = {"error", "route", "source_topic", "source_message_id", "redelivery_count"}


def tool(
    config_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``pulsar-bridge <args> -c <config_dir>`` to completion."""
    return subprocess.run(
        [*_command(config_dir, *args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _command(config_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", *args, "-c", str(config_dir)]


@pytest.fixture
def config_dir(tmp_path: Path, broker: Broker, topics: Topics) -> Path:
    """A config directory with one route, ``fraud``, on ``topics``."""
    return write_config(
        tmp_path / "config",
        service_url=broker.url,
        databricks={"host": "http://127.0.0.1:9", "client_id": "x", "client_secret": "y"},
        routes={"fraud": route_config(topics)},
    )


def send_each(
    client: pulsar.Client,
    topic: str,
    messages: Sequence[tuple[bytes, dict[str, str], str | None]],
) -> None:
    """Publish one message at a time, each its own broker entry, each confirmed."""
    producer = client.create_producer(topic, batching_enabled=False)
    for data, properties, key in messages:
        if key is None:
            producer.send(data, properties=properties)
        else:
            producer.send(data, properties=properties, partition_key=key)
    producer.close()


def read_to_marker(client: pulsar.Client, topic: str) -> list[Received]:
    """Everything on ``topic`` before a marker published now, earlier markers left out.

    The marker is an event a running bridge can score, so it never becomes a dead letter.
    """
    marker = json.dumps(event(0, id=f"marker-{uuid.uuid4().hex[:8]}")).encode()
    reader = TopicReader(client, topic)
    send_each(client, topic, [(marker, {}, None)])
    got = reader.read_until(lambda ms: any(m.data == marker for m in ms))
    reader.close()
    assert any(m.data == marker for m in got), "the marker arrived"
    return [m for m in got if b'"marker-' not in m.data]


def dead_letter(i: int, error: str) -> tuple[bytes, dict[str, str], str]:
    """A dead letter as the bridge writes it: the event's bytes, key and properties + why."""
    properties = {
        "trace": f"t-{i}",
        "error": error,
        "route": "fraud",
        "source_topic": "persistent://public/default/whatever-partition-0",
        "source_message_id": f"(1,{i},-1,-1)",
        "redelivery_count": "0",
    }
    return json.dumps(event(i)).encode(), properties, f"k{i}"


# ----------------------------------------------------------------------------------- send


def test_send_publishes_each_json_line_keyed_by_a_field(
    pulsar_client: pulsar.Client, topics: Topics, config_dir: Path, tmp_path: Path
) -> None:
    lines = [json.dumps(event(i, card=f"c{i % 2}")) for i in range(3)]
    path = tmp_path / "events.jsonl"
    path.write_text(f"{lines[0]}\n\n{lines[1]}\n{lines[2]}\n")

    done = tool(config_dir, "send", "--topic", topics.source, "--key-field", "card", str(path))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sent 3 message(s) to {topics.source}"
    got = read_to_marker(pulsar_client, topics.source)
    assert [(m.data.decode(), m.key) for m in got] == [
        (lines[0], "c0"),
        (lines[1], "c1"),
        (lines[2], "c0"),
    ]


def test_send_names_bad_lines_and_sends_nothing_unless_told_to_skip_them(
    pulsar_client: pulsar.Client, topics: Topics, config_dir: Path
) -> None:
    good = [json.dumps(event(i)) for i in range(2)]
    stdin = "\n".join([good[0], "not json", '["a", "list"]', '{"no": "id"}', good[1]]) + "\n"
    args = ("send", "--topic", topics.source, "--key-field", "id")

    refused = tool(config_dir, *args, stdin=stdin)

    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "line 2: not JSON" in refused.stderr
    assert "line 3: JSON list, not an object" in refused.stderr
    assert "line 4: no field 'id' for the key" in refused.stderr
    assert "sent nothing: 3 bad line(s)" in refused.stderr
    assert read_to_marker(pulsar_client, topics.source) == []

    skipped = tool(config_dir, *args, "--skip-bad", "-", stdin=stdin)

    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.strip() == (
        f"sent 2 message(s) to {topics.source}; skipped 3 bad line(s)"
    )
    got = read_to_marker(pulsar_client, topics.source)
    assert [(m.data.decode(), m.key) for m in got] == [
        (good[0], "e0"),
        (good[1], "e1"),
    ]


# ----------------------------------------------------------------------------------- tail


def test_tail_prints_the_last_messages_and_acknowledges_nothing(
    pulsar_client: pulsar.Client, topics: Topics, config_dir: Path
) -> None:
    # A real subscription made before: after tail it still gets every message.
    real = TopicReader(pulsar_client, topics.dlq)
    letters = [dead_letter(i, f"HTTP 400: row {i}") for i in range(5)]
    send_each(pulsar_client, topics.dlq, letters)

    as_json = tool(config_dir, "tail", "--topic", topics.dlq, "--limit", "3", "--json")
    as_text = tool(config_dir, "tail", "--topic", topics.dlq, "--limit", "1")

    assert as_json.returncode == 0, as_json.stderr
    shown = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(s["key"], s["properties"], s["payload"]) for s in shown] == [
        (key, properties, data.decode()) for data, properties, key in letters[2:]
    ]
    assert as_text.returncode == 0, as_text.stderr
    data, properties, _ = letters[4]
    assert "key=k4" in as_text.stdout
    assert f"  error={properties['error']}" in as_text.stdout
    assert f"  {data.decode()}" in as_text.stdout
    assert len(real.read_until(lambda ms: len(ms) >= 5)) == 5
    real.close()


def test_tail_follow_prints_messages_as_they_arrive_until_interrupted(
    pulsar_client: pulsar.Client, topics: Topics, config_dir: Path
) -> None:
    send_each(pulsar_client, topics.result, [(b'{"n": 0}', {"route": "fraud"}, "a")])
    with _sigint_not_ignored():
        process = subprocess.Popen(
            [*_command(config_dir, "tail"), "--topic", topics.result, "--follow", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A Python that prints every thread's stack on SIGABRT: see _exit_code.
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    lines = _lines_of(process)
    stderr = _drained(process)
    try:
        # The first line means the reader has read what was there: the rest is new.
        assert json.loads(next(lines))["payload"] == '{"n": 0}'
        send_each(pulsar_client, topics.result, [(b'{"n": 1}', {}, "b"), (b'{"n": 2}', {}, None)])
        assert [json.loads(next(lines))["key"] for _ in range(2)] == ["b", None]
    finally:
        process.send_signal(signal.SIGINT)
        code = _exit_code(process, stderr)
        assert process.stdout is not None
        process.stdout.close()
    assert code == 0, "".join(stderr.lines)


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """A process started inside gets SIGINT as it would from a terminal.

    A test run started in the background by a non-interactive shell (``cmd &``) has SIGINT
    ignored, and an ignored signal stays ignored across exec: the child's Python then
    installs no KeyboardInterrupt handler and SIGINT does nothing to it, as Unix means for a
    background job. With a handler set here instead, the child starts with the default.
    """
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class _Drained:
    """A process's stderr, read to its end by a thread (a pipe nobody reads can fill and
    stop the process), kept for the failure message."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        with pipe:
            self.lines.extend(pipe)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _drained(process: subprocess.Popen[str]) -> _Drained:
    assert process.stderr is not None
    return _Drained(process.stderr)


def _exit_code(process: subprocess.Popen[str], stderr: _Drained, timeout: float = 30) -> int:
    """The process's exit code. One still running after ``timeout`` s is made to print every
    thread's stack (faulthandler, on SIGABRT) and the test fails with what it printed."""
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.join(10)
        pytest.fail(
            f"still running {timeout:g} s after SIGINT; its stderr and stacks:\n"
            + "".join(stderr.lines)[-8000:]
        )
    stderr.join(10)
    return code


def _lines_of(process: subprocess.Popen[str], timeout: float = 60) -> Iterator[str]:
    """The process's stdout lines; each ``next`` waits at most ``timeout`` seconds."""
    arrived: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            arrived.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def lines() -> Iterator[str]:
        while True:
            try:
                yield arrived.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no output line within {timeout}s") from None

    return lines()


@APACHE_ONLY
def test_tail_leaves_no_subscription_behind(
    broker: ApachePulsarBroker, pulsar_client: pulsar.Client, topics: Topics, config_dir: Path
) -> None:
    send_each(pulsar_client, topics.dlq, [dead_letter(0, "HTTP 400")])

    done = tool(config_dir, "tail", "--topic", topics.dlq)

    assert done.returncode == 0, done.stderr
    local = topics.dlq.removeprefix("persistent://")
    stats = httpx.get(f"{broker.admin_url}/admin/v2/persistent/{local}/stats").json()
    assert stats["subscriptions"] == {}


# --------------------------------------------------------------------------------- replay


def test_replay_sends_dead_letters_back_to_the_source_once_the_endpoint_is_fixed(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    # The endpoint rejects two events (a bug on its side): they are dead-lettered. Once it
    # is fixed, replay puts them back on the source topic as they were, and they score.
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    bridge = start_bridge({"fraud": route_config(topics)})
    events = [event(i, _poison=i in (1, 4)) for i in range(6)]
    send_each(
        pulsar_client,
        topics.source,
        [(json.dumps(e).encode(), {"trace": f"t-{i}"}, f"k{i}") for i, e in enumerate(events)],
    )
    assert len(dead.read_until(lambda ms: len(ms) >= 2)) == 2
    assert len(results.read_until(lambda ms: len(ms) >= 4)) == 4
    emulator.state.faults.update({"poison_field": None}, now=0)

    done = tool(bridge.config_dir, "replay", "--route", "fraud")

    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if line.startswith("replayed ")]) == 2
    assert "read 2 dead letter(s); replayed 2; left 0 unacknowledged" in done.stdout
    scored = results.read_until(lambda ms: len(ms) >= 6)
    assert sorted((m.json["id"], m.key) for m in scored) == [(f"e{i}", f"k{i}") for i in range(6)]
    source = read_to_marker(pulsar_client, topics.source)
    replayed = source[6:]
    assert [(m.json["id"], m.key, m.properties) for m in replayed] == [
        ("e1", "k1", {"trace": "t-1"}),
        ("e4", "k4", {"trace": "t-4"}),
    ]
    # Acknowledged once replayed: a second replay finds nothing left.
    again = tool(bridge.config_dir, "replay", "--route", "fraud", "--wait", "1")
    assert again.returncode == 0, again.stderr
    assert "read 0 dead letter(s); replayed 0" in again.stdout
    results.close()
    dead.close()


def test_replay_filters_leave_the_rest_for_a_later_replay_and_dry_run_acks_nothing(
    pulsar_client: pulsar.Client, topics: Topics, config_dir: Path
) -> None:
    errors = ["HTTP 400: row", "HTTP 503: busy"] * 3
    letters = [dead_letter(i, error) for i, error in enumerate(errors)]
    send_each(pulsar_client, topics.dlq, letters)

    dry = tool(config_dir, "replay", "--route", "fraud", "--error-contains", "400", "--dry-run")
    first = tool(config_dir, "replay", "--route", "fraud", "--error-contains", "400")
    second = tool(config_dir, "replay", "--route", "fraud", "--error-contains", "503")

    assert dry.returncode == 0, dry.stderr
    assert len([line for line in dry.stdout.splitlines() if line.startswith("would ")]) == 3
    assert "read 6 dead letter(s); would replay 3; left 3 unacknowledged" in dry.stdout
    assert first.returncode == 0, first.stderr
    assert "read 6 dead letter(s); replayed 3; left 3 unacknowledged" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "read 3 dead letter(s); replayed 3; left 0 unacknowledged" in second.stdout
    replayed = read_to_marker(pulsar_client, topics.source)
    expected = [letters[i] for i in (0, 2, 4, 1, 3, 5)]
    assert [(m.data, m.key, m.properties) for m in replayed] == [
        (data, key, {"trace": properties["trace"]}) for data, properties, key in expected
    ]
    assert all(not DEAD_LETTER_KEYS & m.properties.keys() for m in replayed)


def test_replay_takes_a_batch_of_dead_letters_whole_or_not_at_all(
    pulsar_client: pulsar.Client, topics: Topics, config_dir: Path
) -> None:
    # Pulsar acknowledges a batch as one: replaying part of it would replay it again later.
    producer = pulsar_client.create_producer(
        topics.dlq, batching_enabled=True, batching_max_publish_delay_ms=60_000
    )
    letters = [dead_letter(i, error) for i, error in enumerate(["A1", "B", "A2"])]
    for data, properties, key in letters:
        producer.send_async(data, None, properties=properties, partition_key=key)
    producer.flush()
    producer.close()

    filtered = tool(config_dir, "replay", "--route", "fraud", "--error-contains", "A")
    everything = tool(config_dir, "replay", "--route", "fraud", "--to", topics.result)

    assert filtered.returncode == 0, filtered.stderr
    assert filtered.stdout.count("shares a broker batch") == 2
    assert "replayed 0; left 3 unacknowledged (2 held)" in filtered.stdout
    assert everything.returncode == 0, everything.stderr
    assert "read 3 dead letter(s); replayed 3; left 0" in everything.stdout
    got = read_to_marker(pulsar_client, topics.result)
    assert [m.key for m in got] == ["k0", "k1", "k2"]
    assert read_to_marker(pulsar_client, topics.source) == []


def test_replay_by_time_window_limit_and_rate(
    pulsar_client: pulsar.Client, topics: Topics, config_dir: Path
) -> None:
    letters = [dead_letter(i, "HTTP 400") for i in range(4)]
    send_each(pulsar_client, topics.dlq, letters)
    stored = _publish_times(pulsar_client, topics.dlq, 4)
    since, until = stored[1], stored[3]
    # The broker's clock has milliseconds: neighbours may share one, so the expectation is
    # computed from the stored times rather than assumed.
    window = [i for i, t in enumerate(stored) if since <= t < until]

    timed = tool(
        config_dir, "replay", "--route", "fraud", "--to", topics.result, "--rate", "200/s",
        "--since", _iso(since), "--until", _iso(until),
    )  # fmt: skip
    # A subscription of its own: on the first one, pulsar-lite can stall the dead letters
    # the timed run left unacked once its consumer closed (a known pulsar-lite bug), and the
    # limited run would then end on --wait before it reads past its limit.
    limited = tool(
        config_dir, "replay", "--route", "fraud", "--limit", "1", "--subscription", "limited"
    )

    assert timed.returncode == 0, timed.stderr
    assert f"replayed {len(window)}; left {4 - len(window)}" in timed.stdout
    got = read_to_marker(pulsar_client, topics.result)
    assert [m.key for m in got] == [f"k{i}" for i in window]
    assert limited.returncode == 0, limited.stderr
    assert "replayed 1;" in limited.stdout
    assert "stopped at --limit 1" in limited.stdout
    # Its own subscription starts at the first dead letter, whatever the timed run took.
    assert [m.key for m in read_to_marker(pulsar_client, topics.source)] == ["k0"]


def _publish_times(client: pulsar.Client, topic: str, count: int) -> list[int]:
    consumer = client.subscribe(
        topic, f"times-{uuid.uuid4().hex[:8]}", initial_position=pulsar.InitialPosition.Earliest
    )
    times = []
    for _ in range(count):
        message = consumer.receive(timeout_millis=30_000)
        times.append(message.publish_timestamp())
        consumer.acknowledge(message)
    consumer.close()
    return times


def _iso(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).replace(microsecond=millis * 1000)
    return moment.isoformat()


# ------------------------------------------------------------------------- run's stdout


class BridgeRunWith(BridgeProcess):
    """``pulsar-bridge run`` with extra arguments; its stderr goes to a file, apart."""

    def __init__(self, config_dir: Path, *args: str) -> None:
        super().__init__(config_dir)
        self.args = args
        self.stderr_path = config_dir / "stderr.log"

    def start(self) -> BridgeRunWith:
        with self.stderr_path.open("w") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "-c", str(self.config_dir), *self.args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                errors="replace",
                env=self.env,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self


def test_run_prints_only_json_lines_the_pulsar_clients_included(
    tmp_path: Path, broker: Broker, emulator: EmulatorServer, pulsar_client: pulsar.Client
) -> None:
    topics = Topics()
    config = write_config(
        tmp_path / "config",
        service_url=broker.url,
        databricks={"host": emulator.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        routes={"fraud": route_config(topics)},
    )
    results = TopicReader(pulsar_client, topics.result)
    # The config says info; --log-level debug must win, for the client's lines too.
    bridge = BridgeRunWith(config, "--log-level", "debug").start()
    try:
        bridge.wait_ready()
        send_each(pulsar_client, topics.source, [(json.dumps(event(0)).encode(), {}, None)])
        results.read_until(lambda ms: len(ms) >= 1)
        # The client's INFO lines show at the bridge's debug level only.
        bridge.wait_for("pulsar_client", lambda line: line["level"] == "info")
        assert bridge.stop() == 0
    finally:
        bridge.kill()
        results.close()
    not_json = [line for line in bridge.raw if not _is_json_object(line)]
    assert not_json == []
    client_lines = bridge.events("pulsar_client")
    assert {"source", "message", "level", "timestamp"} <= client_lines[0].keys()


def _is_json_object(line: str) -> bool:
    try:
        parsed: Any = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(parsed, dict)
