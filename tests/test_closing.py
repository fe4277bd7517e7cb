"""Bounded blocking closes: a close that never returns neither holds the caller nor the
process's exit."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bridge.closing import close_off_loop
from bridge.errors import BrokerError


async def test_a_close_that_returns_is_waited_for() -> None:
    closed: list[str] = []
    await close_off_loop(lambda: closed.append(threading.current_thread().name), "closing x")
    assert closed == ["pulsar-close"], "on a thread of its own"


async def test_what_a_close_raises_reaches_the_caller() -> None:
    def refuse() -> None:
        raise ValueError("already closed")

    with pytest.raises(ValueError, match="already closed"):
        await close_off_loop(refuse, "closing x")


async def test_a_close_that_never_returns_is_given_up_on_and_leaves_a_daemon_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridge.closing.CLOSE_BOUND_S", 0.05)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    entered, release = threading.Event(), threading.Event()
    stuck: list[threading.Thread] = []

    def hang() -> None:
        stuck.append(threading.current_thread())
        entered.set()
        release.wait()

    try:
        with pytest.raises(BrokerError, match="closing the reader of t did not finish within"):
            await close_off_loop(hang, "closing the reader of t")
        assert entered.wait(5)
        assert stuck[0].daemon, "the interpreter's exit does not wait for it"
        assert stuck[0].is_alive()
    finally:
        release.set()
    stuck[0].join(timeout=5)
    for _ in range(3):  # the late outcome's callback runs on the loop
        await asyncio.sleep(0)
    assert unhandled == [], "an outcome for a future given up on is dropped, not raised"
