"""Topic names: every spelling Pulsar accepts normalises to one name; the rest are refused."""

from __future__ import annotations

import pytest

from bridge.topics import TopicNameError, default_dead_letter_topic, normalise, overlaps, parse


@pytest.mark.parametrize(
    ("written", "full"),
    [
        ("transactions", "persistent://public/default/transactions"),
        ("acme/payments/transactions", "persistent://acme/payments/transactions"),
        ("persistent://acme/payments/tx", "persistent://acme/payments/tx"),
        ("non-persistent://acme/payments/tx", "non-persistent://acme/payments/tx"),
        # Legacy names with a cluster are still parsed by the broker; kept as written.
        ("persistent://acme/us-west/payments/tx", "persistent://acme/us-west/payments/tx"),
        # Tenant and namespace allow - _ = : . besides letters and digits.
        ("persistent://a-b_c/x=y:z.1/tx", "persistent://a-b_c/x=y:z.1/tx"),
        # The local name is free-form (the broker encodes it), dots and all.
        ("events.v2-partition-3", "persistent://public/default/events.v2-partition-3"),
    ],
)
def test_normalise(written: str, full: str) -> None:
    assert normalise(written) == full


def test_the_three_spellings_of_one_topic_are_equal() -> None:
    spellings = [
        "transactions",
        "public/default/transactions",
        "persistent://public/default/transactions",
    ]

    assert {normalise(s) for s in spellings} == {"persistent://public/default/transactions"}
    assert len({parse(s) for s in spellings}) == 1


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "must not be empty"),
        ("default/tx", "write <topic>, <tenant>/<namespace>/<topic>"),
        ("a/b/c/d", "write <topic>, <tenant>/<namespace>/<topic>"),
        ("a//tx", "the namespace is empty"),
        ("/public/default", "the tenant is empty"),
        ("public/default/", "empty topic name after the namespace"),
        ("http://public/default/tx", "unknown domain 'http'"),
        ("persistent://public/tx", "needs a tenant, a namespace and a topic"),
        ("persistent://pub lic/default/tx", "whitespace or a control character"),
        ("tx ", "whitespace or a control character"),
        ("tx\n", "whitespace or a control character"),
        ("persistent://public/déf/tx", "the namespace is 'déf': only letters, digits"),
        ("persistent://acme!/default/tx", "the tenant is 'acme!'"),
        ("persistent://a//ns/tx", "the cluster is empty"),
    ],
)
def test_invalid_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(TopicNameError) as info:
        parse(name)

    assert reason in str(info.value)
    if name:
        assert repr(name) in str(info.value)


def test_domain_and_partition() -> None:
    whole = parse("tx")
    part = parse("persistent://public/default/tx-partition-2")

    assert whole.persistent
    assert not parse("non-persistent://public/default/tx").persistent
    assert whole.partition is None
    assert part.partition == 2
    assert part.base == whole
    # Not partition suffixes: a leading zero, a negative number, no number.
    for local in ("tx-partition-01", "tx-partition--1", "tx-partition-"):
        assert parse(local).partition is None


def test_overlaps() -> None:
    tx = parse("tx")

    assert overlaps(tx, parse("public/default/tx"))
    # A partitioned topic and one of its partitions share messages, either way round.
    assert overlaps(tx, parse("tx-partition-0"))
    assert overlaps(parse("tx-partition-0"), tx)
    # Two partitions of one topic do not; nor do other domains, namespaces or names.
    assert not overlaps(parse("tx-partition-0"), parse("tx-partition-1"))
    assert not overlaps(tx, parse("non-persistent://public/default/tx"))
    assert not overlaps(tx, parse("public/other/tx"))
    assert not overlaps(tx, parse("tx2"))


def test_default_dead_letter_topic_follows_pulsars_convention() -> None:
    assert default_dead_letter_topic("persistent://t/n/tx", "sub") == "persistent://t/n/tx-sub-DLQ"
    assert normalise(default_dead_letter_topic("tx", "sub")) == (
        "persistent://public/default/tx-sub-DLQ"
    )
