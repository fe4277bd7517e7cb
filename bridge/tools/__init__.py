"""Operator commands that work on the broker beside the daemon: send, tail, replay.

Each command module has ``add_arguments(parser)`` and an ``async run(config, args)``
returning the exit code. They share what this module sets up: the config directory's
``[pulsar]`` settings (service URL, TLS, auth), the Pulsar client's own log lines as
structured lines on stderr (stdout carries the command's output only), and SIGINT or
SIGTERM as a cancellation that closes consumers, so acknowledgements already made reach
the broker before the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bridge.config import Config
from bridge.errors import BrokerError

Tool = Callable[[Config, argparse.Namespace], Awaitable[int]]
# Exit code of a command stopped by SIGINT or SIGTERM before it finished (128 + SIGINT).
INTERRUPTED = 130


def add_commands(
    sub: Any,
    config_arg: Callable[[argparse.ArgumentParser], None],
    *,
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Add send, tail and replay to the ``pulsar-bridge`` subcommands."""
    from . import replay, send, tail

    commands = (
        ("send", "publish JSON lines from a file or stdin to a topic", send, INTERRUPTED),
        ("tail", "print the messages of a topic (results, dead letters)", tail, 0),
        ("replay", "republish a route's dead letters to its source topic", replay, INTERRUPTED),
    )
    for name, summary, module, interrupted in commands:
        parser = sub.add_parser(name, help=summary, description=module.__doc__)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        config_arg(parser)
        module.add_arguments(parser)
        parser.set_defaults(handler=handler, tool=module.run, interrupted=interrupted)


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def run_tool(config: Config, args: argparse.Namespace) -> int:
    """Run the command ``args`` selected, with the set-up described above."""
    from bridge.client_log import NativeStdout

    with NativeStdout():
        _log_to_stderr()
        try:
            code: int = asyncio.run(_until_signalled(args.tool(config, args)))
        except (KeyboardInterrupt, asyncio.CancelledError):
            code = int(args.interrupted)
        except BrokerError as exc:
            print(f"pulsar-bridge: {exc}", file=sys.stderr)
            code = 1
    return code


async def _until_signalled(work: Awaitable[int]) -> int:
    # SIGTERM cancels like Ctrl-C does, so `finally` blocks close consumers and producers.
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def _log_to_stderr() -> None:
    """Warnings and errors (the client's, the tool's) as readable lines on stderr."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
