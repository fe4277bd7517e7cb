"""Per-version accounting: totals since start-up and each version's share of recent events."""

from __future__ import annotations

import pytest

from bridge.rollout import UNNAMED, VersionShares


def test_totals_count_every_event_of_every_version() -> None:
    shares = VersionShares(window=100)
    shares.add("m-1", 60)
    shares.add("m-2", 30)
    shares.add("m-1", 10)
    assert shares.totals() == {"m-1": 70, "m-2": 30}


def test_the_recent_share_follows_a_rollout_where_totals_lag_behind() -> None:
    shares = VersionShares(window=100)
    for _ in range(20):  # before: all on version 1
        shares.add("m-1", 10)
    for i in range(20):  # the rollout: 9 of 10 batches on version 2
        shares.add("m-1" if i % 10 == 0 else "m-2", 10)
    assert shares.shares() == {"m-1": 0.1, "m-2": 0.9}
    assert shares.totals() == {"m-1": 220, "m-2": 180}


def test_a_version_gone_from_the_window_has_no_share_but_keeps_its_total() -> None:
    shares = VersionShares(window=50)
    shares.add("m-1", 10)
    for _ in range(10):
        shares.add("m-2", 10)
    assert shares.shares() == {"m-2": 1.0}
    assert shares.status() == {
        "m-1": {"events": 10, "recent_share": 0.0},
        "m-2": {"events": 100, "recent_share": 1.0},
    }


def test_the_window_holds_at_least_window_events_one_batch_at_a_time() -> None:
    shares = VersionShares(window=25)
    shares.add("a", 20)
    shares.add("b", 20)  # 40 in hand: dropping "a" would leave 20 < 25
    assert shares.shares() == {"a": 0.5, "b": 0.5}
    shares.add("b", 10)  # 50: dropping "a" leaves 30 >= 25
    assert shares.shares() == {"b": 1.0}


def test_answers_naming_no_model_are_counted_as_unknown() -> None:
    shares = VersionShares()
    shares.add(None, 3)
    assert shares.totals() == {UNNAMED: 3}


def test_nothing_scored_yet_has_no_shares() -> None:
    assert VersionShares().shares() == {}
    with pytest.raises(ValueError, match="at least 1"):
        VersionShares(window=0)
