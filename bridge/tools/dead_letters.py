"""What a replay does with each dead letter: the decisions, without any I/O.

Which dead letters a replay takes (:class:`Selection`), where each goes
(:func:`destination`), what it carries there (:func:`replay_properties`), and how a
broker entry holding several dead letters is judged as one (:func:`judge`): Pulsar
acknowledges a batch entry only as a whole (unless batch-index acknowledgement is on in
both the client and the broker, which neither pulsar-lite nor Apache Pulsar 4.0 does by
default), so replaying part of a batch and leaving the rest would replay the first part
again next time. A batch is therefore replayed whole or not at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bridge.pulsar_source import Received

# What bridge.events.dead_letter_message adds to an event's own properties: dropped on
# the way back, so a replayed event looks as it did before it failed.
DEAD_LETTER_PROPERTIES = frozenset(
    {"error", "route", "source_topic", "source_message_id", "redelivery_count"}
)
_PARTITION = re.compile(r"-partition-\d+$")


def replay_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """The event's own properties: a dead letter's minus what dead-lettering added."""
    return {k: v for k, v in properties.items() if k not in DEAD_LETTER_PROPERTIES}


def parse_time(text: str) -> int:
    """An ISO 8601 time (UTC when it names no offset) in milliseconds since the epoch."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def parse_rate(text: str) -> float:
    """``N/s`` or ``N``: dead letters per second, more than 0."""
    number = text.removesuffix("/s")
    try:
        rate = float(number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (write e.g. 50/s)") from exc
    if not rate > 0:
        raise argparse.ArgumentTypeError("the rate must be more than 0")
    return rate


@dataclass(frozen=True)
class Selection:
    """The filters of one replay; a dead letter is taken when it passes all of them.

    ``since_ms`` and ``until_ms`` bound when the dead letter was published (when the
    event was dead-lettered): since is inclusive, until exclusive.
    """

    error_contains: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def takes(self, message: Received) -> bool:
        wanted = self.error_contains
        if wanted is not None and wanted not in message.properties.get("error", ""):
            return False
        published = message.publish_time_ms
        if self.since_ms is not None and published < self.since_ms:
            return False
        return self.until_ms is None or published < self.until_ms


def full_topic_name(topic: str) -> str:
    """``persistent://public/default/x`` for ``x``, as the broker reads a short name."""
    if "://" in topic:
        return topic
    return f"persistent://{topic if '/' in topic else f'public/default/{topic}'}"


def destination(
    properties: Mapping[str, str], route_topics: Sequence[str], to: str | None
) -> str | None:
    """Where a dead letter is replayed; None when that cannot be told (use --to).

    --to wins; a route with one source topic sends everything there; otherwise the dead
    letter's ``source_topic`` (a partition names its whole topic) picks among the route's.
    """
    if to is not None:
        return to
    if len(route_topics) == 1:
        return route_topics[0]
    source = properties.get("source_topic")
    if not source:
        return None
    wanted = _PARTITION.sub("", full_topic_name(source))
    for topic in route_topics:
        if full_topic_name(topic) == wanted:
            return topic
    return None


@dataclass
class Verdict:
    """What to do with the dead letters of one broker entry."""

    replay: list[tuple[Received, str]] = field(default_factory=list)  # with destination
    left: int = 0  # not taken by the selection: stay unacknowledged for a later replay
    held: list[tuple[Received, str]] = field(default_factory=list)  # with the reason


BATCHED_WITH_OTHERS = (
    "shares a broker batch with dead letters the filters leave out (a batch is "
    "acknowledged whole); widen the filters to replay it"
)
NO_DESTINATION = "its source topic is not one of the route's topics; name one with --to"


def judge(
    entry: Sequence[Received], selection: Selection, route_topics: Sequence[str], to: str | None
) -> Verdict:
    """Replay every dead letter of one entry, or none of them (see the module docstring)."""
    taken = [message for message in entry if selection.takes(message)]
    verdict = Verdict(left=len(entry) - len(taken))
    if not taken:
        return verdict
    if verdict.left:
        verdict.held = [(message, BATCHED_WITH_OTHERS) for message in taken]
        return verdict
    targets = [destination(message.properties, route_topics, to) for message in taken]
    if any(target is None for target in targets):
        verdict.held = [(message, NO_DESTINATION) for message in taken]
        return verdict
    verdict.replay = [
        (message, target) for message, target in zip(taken, targets, strict=True) if target
    ]
    return verdict
