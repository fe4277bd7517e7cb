"""Effectively-once lines: sequence ids from source positions, and the reorder buffer's
rules (admission, source order, dead letters, halting), with a scripted producer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import cast

import pytest
from structlog.testing import capture_logs

from bridge.effectively_once import EffectivelyOnce, OutOfRange, sequence_id
from bridge.errors import BatchRefused, BrokerError
from bridge.partition_line import PartitionLine, SequencedPublisher
from bridge.pulsar_publish import OutgoingMessage
from bridge.pulsar_source import Position, Received


def test_sequence_ids_increase_with_the_source_position() -> None:
    positions = [
        Position(0, 7, 0, -1),
        Position(0, 7, 1, 0),
        Position(0, 7, 1, 1),  # batched messages of one entry keep their own ids
        Position(0, 7, 1, 999),
        Position(0, 7, 2, -1),
        Position(0, 8, 0, -1),
        Position(0, (1 << 31) - 1, (1 << 22) - 1, 1023),
    ]
    ids = [sequence_id(p) for p in positions]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert ids[-1] < 1 << 63


@pytest.mark.parametrize(
    "position",
    [Position(0, 1 << 31, 0, -1), Position(0, 1, 1 << 22, -1), Position(0, 1, 1, 1024)],
)
def test_a_position_beyond_the_range_is_refused(position: Position) -> None:
    with pytest.raises(OutOfRange, match="exceeds the effectively-once sequence range"):
        sequence_id(position)


class FakeReceived:
    def __init__(self, entry: int, topic: str = "persistent://public/default/in") -> None:
        self.topic = topic
        self.position = Position(0, 5, entry, -1)
        self.message_id = f"(5,{entry},-1,-1)"


class ScriptedProducer:
    """Records each batch sent (the ids of its results, read from their payloads, and
    the id it was sent under); a send completes when the test releases it."""

    def __init__(self, last: int = -1) -> None:
        self.last_sequence_id = last
        self.sent: list[list[int]] = []
        self.batch_ids: list[int] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next = False
        self.answered = asyncio.Event()  # set once a send has its outcomes

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], sequence_id: int
    ) -> BrokerError | None:
        self.sent.append([_entry(data) for data, _, _ in messages])
        self.batch_ids.append(sequence_id)
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            return BrokerError("timed out")
        # The C++ client's own count, which a line must not trust: a batch's ids taken
        # as consecutive from the one it was sent under.
        self.last_sequence_id = sequence_id + len(messages) - 1
        self.answered.set()
        return None


class ClosingProducer(ScriptedProducer):
    """A scripted producer whose close sets ``closed``."""

    def __init__(self, closed: asyncio.Event, last: int = -1) -> None:
        super().__init__(last)
        self._closed = closed

    async def close(self) -> None:
        self._closed.set()


def _entry(data: bytes) -> int:
    """The id of the result ``msg`` made (-1 for another payload)."""
    try:
        return seq(json.loads(data)["prediction"])
    except ValueError:
        return -1


def msg(n: int) -> OutgoingMessage:
    return (b'{"prediction": %d}' % n, {}, None)


def seq(entry: int) -> int:
    return sequence_id(Position(0, 5, entry, -1))


def line_with(producer: ScriptedProducer, entries: range) -> PartitionLine:
    line = PartitionLine(cast(SequencedPublisher, producer))
    for entry in entries:
        assert line.admit(seq(entry), cast(Received, FakeReceived(entry))) == "new"
    return line


async def test_results_leave_in_source_order_whatever_order_they_are_ready_in() -> None:
    producer = ScriptedProducer()
    line = line_with(producer, range(4))
    later = [line.result(seq(3), msg(3)), line.result(seq(2), msg(2))]
    await asyncio.sleep(0)
    assert producer.sent == [], "2 and 3 wait for 0 and 1"
    first = [line.result(seq(0), msg(0)), line.result(seq(1), msg(1))]
    assert await asyncio.gather(*first, *later) == [None] * 4
    flat = [s for call in producer.sent for s in call]
    assert flat == [seq(0), seq(1), seq(2), seq(3)]


async def test_what_the_broker_already_stored_is_acked_and_a_second_delivery_dropped() -> None:
    producer = ScriptedProducer(last=seq(10))
    line = PartitionLine(cast(SequencedPublisher, producer))
    assert line.admit(seq(9), cast(Received, FakeReceived(9))) == "stored"
    assert line.admit(seq(10), cast(Received, FakeReceived(10))) == "stored"
    assert line.admit(seq(11), cast(Received, FakeReceived(11))) == "new"
    assert line.admit(seq(11), cast(Received, FakeReceived(11))) == "duplicate"


async def test_a_dead_letter_frees_its_place_only_once_confirmed() -> None:
    producer = ScriptedProducer()
    line = line_with(producer, range(3))
    done = [line.result(seq(1), msg(1)), line.result(seq(2), msg(2))]
    await asyncio.sleep(0)
    assert producer.sent == [], "0 is on its way to the dead-letter topic"
    line.ended(seq(0), nacked=False)
    assert await asyncio.gather(*done) == [None, None]
    assert [s for call in producer.sent for s in call] == [seq(1), seq(2)]


async def test_a_nack_halts_the_line_so_nothing_later_is_stored_before_it() -> None:
    producer = ScriptedProducer()
    line = line_with(producer, range(3))
    later = line.result(seq(2), msg(2))
    line.ended(seq(1), nacked=True)  # a stop hands 1 back
    zero = line.result(seq(0), msg(0))
    assert await zero is None, "below the halt: still sent"
    outcome = await later
    assert isinstance(outcome, BrokerError)
    assert [s for call in producer.sent for s in call] == [seq(0)]
    assert isinstance(await line.result(seq(2), msg(2)), BrokerError), "stays halted"


async def test_the_line_goes_on_once_every_handed_back_event_is_admitted_again() -> None:
    producer = ScriptedProducer()
    line = line_with(producer, range(5))
    line.ended(seq(1), nacked=True)
    line.ended(seq(3), nacked=True)
    assert isinstance(await line.result(seq(2), msg(2)), BrokerError), "halted at 1"
    assert line.admit(seq(1), cast(Received, FakeReceived(1))) == "new", "1 redelivered"
    two = line.result(seq(2), msg(2))  # the processor hands 2 in again
    assert isinstance(await line.result(seq(4), msg(4)), BrokerError), "still halted at 3"
    await asyncio.sleep(0)
    assert producer.sent == [], "2 waits for the redelivered 1, not overtaking it"
    first = await asyncio.gather(line.result(seq(0), msg(0)), line.result(seq(1), msg(1)))
    assert list(first) == [None, None]
    assert await two is None
    assert line.admit(seq(3), cast(Received, FakeReceived(3))) == "new"
    assert line.halted_at is None
    stored = await asyncio.gather(line.result(seq(3), msg(3)), line.result(seq(4), msg(4)))
    assert list(stored) == [None, None]
    assert [s for call in producer.sent for s in call] == [seq(n) for n in range(5)]


async def test_an_event_stored_as_it_was_handed_back_halts_nothing() -> None:
    producer = ScriptedProducer()
    producer.release.clear()
    line = line_with(producer, range(3))
    line.result(seq(0), msg(0))
    await asyncio.sleep(0)
    assert producer.sent == [[seq(0)]]
    line.ended(seq(0), nacked=True)  # a drain hands 0 back while its send is on its way
    producer.release.set()
    await producer.answered.wait()
    assert line.halted_at is None, "the broker stored 0 after all"
    assert await line.result(seq(1), msg(1)) is None
    assert line.admit(seq(0), cast(Received, FakeReceived(0))) == "stored", "acked"


async def test_a_failed_send_is_sent_again_with_the_same_ids_when_handed_in_again() -> None:
    producer = ScriptedProducer()
    producer.fail_next = True
    line = line_with(producer, range(2))
    first = await asyncio.gather(line.result(seq(0), msg(0)), line.result(seq(1), msg(1)))
    assert all(isinstance(o, BrokerError) for o in first)
    again = await asyncio.gather(line.result(seq(0), msg(0)), line.result(seq(1), msg(1)))
    assert list(again) == [None, None]
    assert producer.sent == [[seq(0), seq(1)], [seq(0), seq(1)]]


async def test_one_line_and_one_stable_producer_name_per_source_partition() -> None:
    names: list[str] = []

    async def open_producer(name: str) -> SequencedPublisher:
        names.append(name)
        return cast(SequencedPublisher, ScriptedProducer())

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    a = "persistent://public/default/in-partition-0"
    b = "persistent://public/default/in-partition-1"
    results = await asyncio.gather(
        *(eo.admit(cast(Received, FakeReceived(i, topic))) for i, topic in enumerate([a, a, b]))
    )
    assert results == ["new", "new", "new"]
    assert names == [eo.producer_name(a), eo.producer_name(b)]
    assert eo.producer_name(a) == EffectivelyOnce("fraud", "sub", open_producer).producer_name(a)
    assert eo.producer_name(a) != eo.producer_name(b)


async def test_admit_now_answers_without_waiting_once_the_line_is_open() -> None:
    async def open_producer(name: str) -> SequencedPublisher:
        return cast(SequencedPublisher, ScriptedProducer(last=seq(1)))

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    first, second, stored = (cast(Received, FakeReceived(e)) for e in (2, 3, 1))
    assert eo.admit_now(first) is None, "no line yet: admit() opens it"
    assert await eo.admit(first) == "new"
    assert eo.admit_now(second) == "new"
    assert eo.admit_now(second) == "duplicate", "a second delivery of what is in progress"
    assert eo.admit_now(stored) == "stored", "the broker holds its result already"


async def test_a_busy_name_is_retried_until_the_previous_owner_lets_go() -> None:
    attempts: list[str] = []

    async def open_producer(name: str) -> SequencedPublisher:
        attempts.append(name)
        if len(attempts) < 3:
            raise BrokerError("cannot create a producer: ProducerBusy: already connected")
        return cast(SequencedPublisher, ScriptedProducer())

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    assert await eo.admit(cast(Received, FakeReceived(1))) == "new"
    assert len(attempts) == 3


async def test_an_idle_line_lets_go_of_its_producer_and_reopens_on_demand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridge.effectively_once.IDLE_CLOSE_S", 0.01)
    closed = asyncio.Event()
    opened: list[str] = []

    async def open_producer(name: str) -> SequencedPublisher:
        opened.append(name)
        return cast(SequencedPublisher, ClosingProducer(closed))

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    received = cast(Received, FakeReceived(1))
    assert await eo.admit(received) == "new"
    assert await eo.publish_all([(received, msg(1))]) == [None]
    await asyncio.wait_for(closed.wait(), timeout=5)
    assert await eo.admit(cast(Received, FakeReceived(2))) == "new"
    assert len(opened) == 2, "opened again for the next event"


async def test_a_line_that_only_saw_stored_events_lets_go_of_its_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a failover the new owner may see only events the old one stored: acked at
    once, they never hold an id, and the name must still be let go for the next owner."""
    monkeypatch.setattr("bridge.effectively_once.IDLE_CLOSE_S", 0.01)
    closed = asyncio.Event()

    async def open_producer(name: str) -> SequencedPublisher:
        return cast(SequencedPublisher, ClosingProducer(closed, seq(5)))

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    assert await eo.admit(cast(Received, FakeReceived(1))) == "stored"
    await asyncio.wait_for(closed.wait(), timeout=5)


async def test_a_halted_line_lets_go_of_its_producer_and_the_next_line_keeps_the_halt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridge.effectively_once.IDLE_CLOSE_S", 0.01)
    closed = asyncio.Event()
    producers: list[ScriptedProducer] = []

    async def open_producer(name: str) -> SequencedPublisher:
        last = producers[-1].last_sequence_id if producers else -1
        producers.append(ClosingProducer(closed, last))
        return cast(SequencedPublisher, producers[-1])

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    one, two = cast(Received, FakeReceived(1)), cast(Received, FakeReceived(2))
    assert await eo.admit(one) == "new"
    assert await eo.admit(two) == "new"
    eo.ended(one, nacked=True)  # handed back: the partition may move to another process
    assert isinstance((await eo.publish_all([(two, msg(2))]))[0], BrokerError), "halted at 1"
    eo.ended(two, nacked=True)
    await asyncio.wait_for(closed.wait(), timeout=5)  # the name is free for a new owner

    assert await eo.admit(two) == "new", "2 redelivered first, to this process again"
    assert isinstance((await eo.publish_all([(two, msg(2))]))[0], BrokerError), "still halted"
    assert len(producers) == 2, "the next line has a producer of its own"
    assert producers[1].sent == []
    eo.ended(two, nacked=True)
    assert await eo.admit(one) == "new"
    assert await eo.admit(two) == "new"
    assert await eo.publish_all([(one, msg(1)), (two, msg(2))]) == [None, None]
    assert [s for call in producers[1].sent for s in call] == [seq(1), seq(2)]


async def test_a_kept_halt_ends_once_the_broker_stored_past_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While this process let go, another owned the partition and stored the handed-back
    event's result: the next line here learns so from the broker and is not halted."""
    monkeypatch.setattr("bridge.effectively_once.IDLE_CLOSE_S", 0.01)
    closed = asyncio.Event()
    lasts = [-1, seq(5)]  # the second producer opens after another owner stored up to 5

    async def open_producer(name: str) -> SequencedPublisher:
        return cast(SequencedPublisher, ClosingProducer(closed, lasts.pop(0)))

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    one = cast(Received, FakeReceived(1))
    assert await eo.admit(one) == "new"
    eo.ended(one, nacked=True)
    await asyncio.wait_for(closed.wait(), timeout=5)
    assert await eo.admit(one) == "stored", "stored by the other owner: acked"
    six = cast(Received, FakeReceived(6))
    assert await eo.admit(six) == "new"
    assert await eo.publish_all([(six, msg(6))]) == [None]


class RaisingProducer(ScriptedProducer):
    """Raises from its first send instead of answering with outcomes."""

    def __init__(self) -> None:
        super().__init__()
        self.raise_next = True

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], sequence_id: int
    ) -> BrokerError | None:
        if self.raise_next:
            self.raise_next = False
            raise RuntimeError("client bug")
        return await super().publish_batch(messages, sequence_id)


async def test_a_sender_that_raises_fails_its_results_like_a_send_and_is_logged() -> None:
    producer = RaisingProducer()
    line = line_with(producer, range(2))
    with capture_logs() as logs:
        first = await asyncio.gather(line.result(seq(0), msg(0)), line.result(seq(1), msg(1)))
        await asyncio.sleep(0)  # the sender's done callback
    assert all(isinstance(o, BrokerError) and "client bug" in str(o) for o in first)
    assert [e["event"] for e in logs] == ["effectively_once_task_failed"]
    again = await asyncio.gather(line.result(seq(0), msg(0)), line.result(seq(1), msg(1)))
    assert list(again) == [None, None], "handed in again: sent again"


class ClosableProducer(ScriptedProducer):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.cancelled = False

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], sequence_id: int
    ) -> BrokerError | None:
        try:
            return await super().publish_batch(messages, sequence_id)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def close(self) -> None:
        self.closed = True


async def test_closing_a_line_cancels_its_send_and_fails_what_waits() -> None:
    producer = ClosableProducer()
    producer.release.clear()  # the send never answers
    line = line_with(producer, range(1))
    stored = line.result(seq(0), msg(0))
    await asyncio.sleep(0)
    assert producer.sent == [[seq(0)]]
    await line.close()
    assert producer.cancelled
    assert producer.closed
    outcome = await stored
    assert isinstance(outcome, BrokerError)
    assert "CancelledError" in str(outcome)


async def test_closing_stops_a_producer_still_being_opened() -> None:
    attempts = asyncio.Event()

    async def open_producer(name: str) -> SequencedPublisher:
        attempts.set()
        raise BrokerError("cannot create a producer: ProducerBusy: already connected")

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    admitting = asyncio.ensure_future(eo.admit(cast(Received, FakeReceived(1))))
    await attempts.wait()
    await eo.close()
    with pytest.raises(asyncio.CancelledError):
        await admitting


async def test_a_ready_prefix_leaves_in_batches_each_named_by_its_highest_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridge.partition_line.DEDUP_BATCH_MAX_MESSAGES", 2)
    producer = ScriptedProducer()
    line = line_with(producer, range(5))
    stored = await asyncio.gather(*(line.result(seq(n), msg(n)) for n in range(5)))
    assert list(stored) == [None] * 5
    assert producer.sent == [[seq(0), seq(1)], [seq(2), seq(3)], [seq(4)]]
    assert producer.batch_ids == [seq(1), seq(3), seq(4)]


async def test_what_is_stored_is_known_from_the_batches_not_the_clients_count() -> None:
    """The C++ client counts a batch's ids as consecutive from the one it was sent under;
    trusting it, the ids above a batch would pass for stored and be acked unpublished."""
    producer = ScriptedProducer()
    line = PartitionLine(cast(SequencedPublisher, producer))
    ids = [sequence_id(Position(0, 5, 7, i)) for i in range(4)]  # one batched entry
    for i in (0, 1):
        assert line.admit(ids[i], cast(Received, FakeReceived(7))) == "new"
    stored = await asyncio.gather(line.result(ids[0], msg(0)), line.result(ids[1], msg(1)))
    assert list(stored) == [None, None]
    assert producer.last_sequence_id == ids[2], "the client's count runs ahead"
    assert line.last_stored == ids[1]
    assert line.admit(ids[2], cast(Received, FakeReceived(7))) == "new"


async def test_no_batch_crosses_the_id_of_a_batch_that_failed_until_it_is_confirmed() -> None:
    """A failed batch may have been stored all the same; a later batch holding its ids
    and higher ones would be kept by the broker and store those ids twice."""
    producer = ScriptedProducer()
    producer.fail_next = True
    line = line_with(producer, range(6))
    first = await asyncio.gather(*(line.result(seq(n), msg(n)) for n in range(4)))
    assert all(isinstance(o, BrokerError) for o in first)
    line.ended(seq(3), nacked=False)  # dead-lettered meanwhile: the boundary stays
    again = await asyncio.gather(*(line.result(seq(n), msg(n)) for n in (0, 1, 2, 4, 5)))
    assert list(again) == [None] * 5
    assert producer.sent == [
        [seq(0), seq(1), seq(2), seq(3)],
        [seq(0), seq(1), seq(2)],
        [seq(4), seq(5)],
    ]
    assert producer.batch_ids == [seq(3), seq(2), seq(5)]
    assert line.last_stored == seq(5)


async def test_a_batch_ends_where_the_client_would_close_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client closes a batch once its payloads reach the byte bound: a result after an
    exact fill, even an empty one, would be a second entry under the same id, dropped."""
    monkeypatch.setattr("bridge.partition_line.DEDUP_BATCH_MAX_BYTES", 40)
    producer = ScriptedProducer()
    line = line_with(producer, range(4))
    exact: OutgoingMessage = (b"x" * 40, {}, None)  # fills the bound alone
    keyed: OutgoingMessage = (b"y" * 10, {"k" * 8: "v" * 8}, "key-1234")  # 10 + 24 + 8 counted: 42
    handed = [(0, exact), (1, (b"", {}, None)), (2, keyed), (3, msg(3))]
    stored = await asyncio.gather(*(line.result(seq(n), m) for n, m in handed))
    assert list(stored) == [None] * 4
    assert producer.batch_ids == [seq(0), seq(1), seq(2), seq(3)]
    assert [len(batch) for batch in producer.sent] == [1, 1, 1, 1]


async def test_a_batch_refused_as_too_large_goes_again_in_smaller_batches() -> None:
    class Refusing(ScriptedProducer):
        async def publish_batch(
            self, messages: Sequence[OutgoingMessage], sequence_id: int
        ) -> BrokerError | None:
            if len(messages) > 2:
                self.sent.append([])
                return BatchRefused("batch too large")
            return await super().publish_batch(messages, sequence_id)

    producer = Refusing()
    line = line_with(producer, range(4))
    first = await asyncio.gather(*(line.result(seq(n), msg(n)) for n in range(4)))
    assert all(isinstance(o, BatchRefused) for o in first), "fine results: sent again"
    again = await asyncio.gather(*(line.result(seq(n), msg(n)) for n in range(4)))
    assert list(again) == [None] * 4
    assert producer.sent == [[], [seq(0), seq(1)], [seq(2), seq(3)]]


async def test_a_nack_while_a_batch_is_on_its_way_stops_the_batches_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridge.partition_line.DEDUP_BATCH_MAX_MESSAGES", 2)
    producer = ScriptedProducer()
    producer.release.clear()
    line = line_with(producer, range(4))
    handed = [line.result(seq(n), msg(n)) for n in range(4)]
    await asyncio.sleep(0)
    assert producer.sent == [[seq(0), seq(1)]]
    line.ended(seq(0), nacked=True)  # a stop hands 0 back while [0, 1] is on its way
    producer.release.set()
    outcomes = await asyncio.gather(*handed[1:])  # 0's was handed back, not awaited
    assert all(isinstance(o, BrokerError) for o in outcomes), "failed by the halt"
    await asyncio.sleep(0)
    assert producer.sent == [[seq(0), seq(1)]], "[2, 3] not sent on its own"
    assert line.halted_at is None, "the broker stored 0 after all"
    assert line.admit(seq(0), cast(Received, FakeReceived(0))) == "stored"
    again = await asyncio.gather(*(line.result(seq(n), msg(n)) for n in (1, 2, 3)))
    assert list(again) == [None] * 3, "1 was stored with its batch; 2 and 3 go now"
    assert producer.sent == [[seq(0), seq(1)], [seq(2), seq(3)]]
