"""pulsar-bridge replay: republish a route's dead letters to its source topic.

Reads the route's dead-letter topic on its own durable subscription (Exclusive, so two
replays cannot run at once; --subscription, default pulsar-bridge-replay) from the first
dead letter it has not acknowledged, up to the newest one present when it started, and
republishes each one the filters take to the route's source topic (or --to), with its
original payload, key and properties, less the ones dead-lettering added (error, route,
source_topic, source_message_id, redelivery_count). A dead letter is acknowledged only
once the broker has confirmed its replay. Dead letters the filters leave out are left
unacknowledged on purpose: the next replay, with other filters, sees them again, and a
replay without filters takes everything that is left. Dead letters the broker stored as
one batch are replayed together or not at all (see bridge.tools.dead_letters).

--dry-run prints what would be replayed and acknowledges nothing. The exit code is 1
when a replay was not confirmed (that dead letter stays, for the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from bridge.config import Config
from bridge.config_route import RouteSettings
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_publish import Publisher
from bridge.pulsar_source import Position, Received, Source
from bridge.tools import count
from bridge.tools.dead_letters import Selection, judge, parse_rate, parse_time, replay_properties

DEFAULT_SUBSCRIPTION = "pulsar-bridge-replay"
# Dead letters taken from the client's queue at once, once one has arrived.
READY_BATCH = 1000
# Shown of a dead letter's error in each line of output.
ERROR_SHOWN = 120


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--route", required=True, help="the route whose dead letters to replay")
    parser.add_argument("--to", metavar="TOPIC", help="publish here instead of the source topic")
    parser.add_argument("--error-contains", metavar="TEXT", help="only errors containing TEXT")
    parser.add_argument(
        "--since", type=parse_time, metavar="ISO", help="only dead-lettered at or after (UTC)"
    )
    parser.add_argument(
        "--until", type=parse_time, metavar="ISO", help="only dead-lettered before (UTC)"
    )
    parser.add_argument("--limit", type=count, metavar="N", help="replay at most N dead letters")
    parser.add_argument(
        "--rate", type=parse_rate, metavar="N/s", help="replay at most N dead letters a second"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed; acknowledge nothing"
    )
    parser.add_argument(
        "--subscription",
        default=DEFAULT_SUBSCRIPTION,
        help=f"the replay's subscription on the dead-letter topic (default {DEFAULT_SUBSCRIPTION})",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=5.0,
        metavar="S",
        help="stop after S seconds without a dead letter (default 5); needed only when the "
        "newest dead letter was replayed before, else the replay stops when it reaches it",
    )


@dataclass
class Tally:
    read: int = 0
    replayed: int = 0
    left: int = 0
    held: int = 0
    failed: int = 0
    stopped_at_limit: bool = False


async def run(config: Config, args: argparse.Namespace) -> int:
    route = next((r for r in config.routes if r.name == args.route), None)
    if route is None:
        names = ", ".join(r.name for r in config.routes) or "none"
        print(f"no route {args.route!r} in {args.config} (routes: {names})", file=sys.stderr)
        return 1
    connection = PulsarConnection(config.bridge.pulsar)
    replay = Replay(connection, route, args)
    try:
        source = await connection.exclusive_source(route.dead_letter_topic, args.subscription)
        try:
            await replay.run(source)
        finally:
            await source.close()  # sends the acknowledgements still grouped in the client
            await replay.close()
    finally:
        await connection.close()
    return replay.report(route.dead_letter_topic)


class Replay:
    """One replay run over a dead-letter subscription."""

    def __init__(
        self, connection: PulsarConnection, route: RouteSettings, args: argparse.Namespace
    ) -> None:
        self._connection = connection
        self._route_topics = list(route.source.topics)
        self._to: str | None = args.to
        self._selection = Selection(args.error_contains, args.since, args.until)
        self._limit: int | None = args.limit
        self._limiter = AsyncLimiter(1, 1 / args.rate) if args.rate else None
        self._dry_run: bool = args.dry_run
        self._wait_s: float = args.wait
        self._publishers: dict[str, Publisher] = {}
        self.tally = Tally()

    async def run(self, source: Source) -> None:
        """Read entry by entry up to the newest dead letter at the start, or a quiet --wait."""
        end = await source.last_position()
        if end is None:
            return  # no dead letters at all
        entry: list[Received] = []
        while arrived := await self._next(source):
            for message in arrived:
                if entry and message.position.entry_key != entry[0].position.entry_key:
                    if not await self._settle(source, entry):
                        return
                    entry = []
                entry.append(message)
            # Past the end, newer dead letters stay for the next run. A batch arrives whole
            # in the client's queue, so its last members came with the first.
            if _reached(entry[-1].position, end):
                break
        if entry:
            await self._settle(source, entry)

    async def _next(self, source: Source) -> list[Received]:
        try:
            first = await asyncio.wait_for(source.receive(), self._wait_s)
        except TimeoutError:
            return []
        return [first, *source.receive_ready(READY_BATCH)]

    async def _settle(self, source: Source, entry: Sequence[Received]) -> bool:
        """Judge one entry and act on it; False once --limit stops the run."""
        verdict = judge(entry, self._selection, self._route_topics, self._to)
        self.tally.read += len(entry)
        self.tally.left += verdict.left + len(verdict.held)
        for message, reason in verdict.held:
            self.tally.held += 1
            print(f"held {message.message_id}: {reason}")
        if not verdict.replay:
            return True
        if self._limit is not None and self.tally.replayed + len(verdict.replay) > self._limit:
            self.tally.stopped_at_limit = True
            self.tally.left += len(verdict.replay)
            return False
        if self._dry_run:
            for message, target in verdict.replay:
                print(f"would replay {_describe(message, target)}")
            self.tally.replayed += len(verdict.replay)
            return True
        for message, target in await self._republish(verdict.replay):
            source.ack(message)  # only now: the broker has stored its replay
            self.tally.replayed += 1
            print(f"replayed {_describe(message, target)}")
        return True

    async def _republish(
        self, replays: Sequence[tuple[Received, str]]
    ) -> list[tuple[Received, str]]:
        """Publish each dead letter to its target; the ones the broker confirmed."""
        confirmed: list[tuple[Received, str]] = []
        # One at a time under --rate, else an entry's dead letters per target together.
        chunks = [[one] for one in replays] if self._limiter else _by_target(replays)
        for chunk in chunks:
            if self._limiter is not None:
                await self._limiter.acquire()
            target = chunk[0][1]
            publisher = self._publishers.get(target)
            if publisher is None:
                publisher = self._publishers[target] = await self._connection.publisher(target)
            outcomes = await publisher.publish_all(
                [(m.data, replay_properties(m.properties), m.key) for m, _ in chunk]
            )
            for (message, _), error in zip(chunk, outcomes, strict=True):
                if error is None:
                    confirmed.append((message, target))
                else:
                    self.tally.failed += 1
                    print(f"not replayed {message.message_id}: {error}", file=sys.stderr)
        return confirmed

    async def close(self) -> None:
        for publisher in self._publishers.values():
            await publisher.close()

    def report(self, dead_letter_topic: str) -> int:
        t = self.tally
        verb = "would replay" if self._dry_run else "replayed"
        line = (
            f"{dead_letter_topic}: read {t.read} dead letter(s); {verb} {t.replayed}; "
            f"left {t.left} unacknowledged"
        )
        if t.held:
            line += f" ({t.held} held)"
        if t.failed:
            line += f"; {t.failed} not confirmed by the broker"
        if t.stopped_at_limit:
            line += f"; stopped at --limit {self._limit}"
        print(line)
        return 1 if t.failed else 0


def _reached(position: Position, end: Position) -> bool:
    """Whether ``position`` is at or past ``end`` (the newest dead letter at the start)."""
    if position.entry_key != end.entry_key:
        return position.entry_key > end.entry_key
    return end.batch_index < 0 or position.batch_index >= end.batch_index


def _by_target(replays: Sequence[tuple[Received, str]]) -> list[list[tuple[Received, str]]]:
    """Runs of consecutive replays with one target, in order."""
    runs: list[list[tuple[Received, str]]] = []
    for replay in replays:
        if runs and runs[-1][0][1] == replay[1]:
            runs[-1].append(replay)
        else:
            runs.append([replay])
    return runs


def _describe(message: Received, target: str) -> str:
    error = message.properties.get("error", "")
    if len(error) > ERROR_SHOWN:
        error = error[: ERROR_SHOWN - 3] + "..."
    return f"{message.message_id} key={message.key or '-'} -> {target}: {error}"
