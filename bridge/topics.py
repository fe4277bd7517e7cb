"""Pulsar topic names: validate one and give the full form every comparison uses.

Pulsar accepts the same topic under several spellings: ``transactions``,
``public/default/transactions`` and ``persistent://public/default/transactions`` all name
one topic. A config that compares the spellings as strings misses a route whose result
topic is its own source. :func:`normalise` follows the broker's ``TopicName`` parser:

- ``<topic>``                      -> ``persistent://public/default/<topic>``
- ``<tenant>/<namespace>/<topic>`` -> ``persistent://<tenant>/<namespace>/<topic>``
- ``<domain>://<tenant>/<namespace>/<topic>``, domain ``persistent`` or ``non-persistent``
- the legacy ``<domain>://<tenant>/<cluster>/<namespace>/<topic>``, kept as written

Tenant, cluster and namespace names hold only ASCII letters, digits and ``- _ = : .``
(Pulsar's ``NamedEntity`` rule); the local name must not be empty. One rule is stricter
than the broker: no whitespace or control characters anywhere, which Pulsar would take
as part of a different topic and which in a config file is always a typing slip.

A ``-partition-<n>`` suffix names one partition of a partitioned topic; :func:`base`
strips it, since consuming the topic reads every partition and publishing to it writes
to one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOMAINS = ("persistent", "non-persistent")
_ENTITY = re.compile(r"[-=:.\w]+", re.ASCII)
_PARTITION = re.compile(r"-partition-(0|[1-9][0-9]*)$")


class TopicNameError(ValueError):
    """A topic name Pulsar would refuse; the message says why."""


@dataclass(frozen=True)
class TopicName:
    """A parsed, fully qualified topic name."""

    domain: str
    namespace: str  # "tenant/namespace", or "tenant/cluster/namespace" (legacy)
    local: str

    def __str__(self) -> str:
        return f"{self.domain}://{self.namespace}/{self.local}"

    @property
    def persistent(self) -> bool:
        return self.domain == "persistent"

    @property
    def partition(self) -> int | None:
        """The partition this name points at, or None for a whole topic."""
        match = _PARTITION.search(self.local)
        return int(match.group(1)) if match else None

    @property
    def base(self) -> TopicName:
        """The whole topic a partition belongs to (itself when not a partition)."""
        match = _PARTITION.search(self.local)
        if match is None:
            return self
        return TopicName(self.domain, self.namespace, self.local[: match.start()])


def parse(name: str) -> TopicName:
    """Parse ``name`` in any form Pulsar accepts; raise TopicNameError with the reason."""
    if not name:
        raise TopicNameError("a topic name must not be empty")
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        raise TopicNameError(f"{name!r} contains whitespace or a control character")
    domain, rest = _qualify(name)
    # As the broker splits it: at most four parts, so a legacy local name may hold '/'.
    parts = rest.split("/", 3)
    if len(parts) < 3:
        raise TopicNameError(
            f"{name!r} needs a tenant, a namespace and a topic: "
            f"{domain}://<tenant>/<namespace>/<topic>"
        )
    *entities, local = parts
    labels = ("tenant", "namespace") if len(entities) == 2 else ("tenant", "cluster", "namespace")
    for label, entity in zip(labels, entities, strict=True):
        if not _ENTITY.fullmatch(entity):
            problem = (
                "is empty" if not entity else f"is {entity!r}: only letters, digits and - _ = : ."
            )
            raise TopicNameError(f"{name!r}: the {label} {problem}")
    if not local:
        raise TopicNameError(f"{name!r} has an empty topic name after the namespace")
    return TopicName(domain, "/".join(entities), local)


def _qualify(name: str) -> tuple[str, str]:
    """(domain, the rest) of a full name; the short forms get the broker's defaults."""
    if "://" in name:
        domain, rest = name.split("://", 1)
        if domain not in DOMAINS:
            raise TopicNameError(
                f"{name!r} has the unknown domain {domain!r} "
                "(use persistent:// or non-persistent://)"
            )
        return domain, rest
    parts = name.split("/")
    if len(parts) == 1:
        return "persistent", f"public/default/{name}"
    if len(parts) == 3:
        return "persistent", name
    raise TopicNameError(
        f"{name!r} is not a topic name: write <topic>, <tenant>/<namespace>/<topic> "
        "or persistent://<tenant>/<namespace>/<topic>"
    )


def normalise(name: str) -> str:
    """The fully qualified form of ``name``: ``persistent://public/default/x`` for ``x``."""
    return str(parse(name))


def default_dead_letter_topic(topic: str, subscription: str) -> str:
    """Pulsar's convention for a consumer's dead-letter topic: ``<topic>-<subscription>-DLQ``."""
    return f"{topic}-{subscription}-DLQ"


def overlaps(a: TopicName, b: TopicName) -> bool:
    """Whether messages published to one can be read from the other.

    Equal names do, and so do a partitioned topic and one of its partitions; two different
    partitions of one topic do not.
    """
    return a == b or a.base == b or a == b.base
