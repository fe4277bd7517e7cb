"""Blocking closes of the Pulsar client's handles, each bounded and off the event loop.

The C++ client's blocking ``close`` of a client or a reader is used rather than an
asynchronous one (see :meth:`bridge.pulsar_io.PulsarConnection.close`), so it runs on a
thread. Not on the loop's default executor: a close that never returns (a broker that
stops answering) would keep that executor's thread, and both ``asyncio.run`` and the
interpreter wait for those threads at exit, so a Ctrl-C or a SIGTERM would never end the
process. A daemon thread of its own is waited for at most ``CLOSE_BOUND_S``; after that the
caller goes on (the close reports a BrokerError) and the thread is left to the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from bridge.errors import BrokerError

# A close takes milliseconds; this is for a broker that no longer answers.
CLOSE_BOUND_S = 10.0


async def close_off_loop(close: Callable[[], object], what: str) -> None:
    """Run ``close`` on a daemon thread; return when it did, raise what it raised, or
    raise BrokerError naming ``what`` once it has taken ``CLOSE_BOUND_S``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():  # given up on (the bound passed, or the caller was cancelled)
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            close()
        except BaseException as exc:  # handed to the caller, on the loop
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="pulsar-close", daemon=True).start()
    try:
        await asyncio.wait_for(done, CLOSE_BOUND_S)
    except TimeoutError:
        raise BrokerError(
            f"{what} did not finish within {CLOSE_BOUND_S:g} s; going on without it"
        ) from None
