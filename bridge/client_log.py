"""The Pulsar client's own log lines, turned into structured log lines.

The C++ client prints its log lines on the process's stdout (``std::cout``) as plain
text, which breaks the daemon's JSON-lines output and a tool's machine-readable output.
Handing the client a Python ``logging.Logger`` instead was measured and rejected: its
wrapper reports every level as enabled, so each DEBUG line the client formats calls into
Python under the GIL (182,606 calls for 20,000 messages sent and received: 3.5 s of CPU
against 0.49 s with the console logger), and a client thread that logs while the
interpreter finalizes can abort the process (apache/pulsar-client-python#256).

So the client keeps its console logger, which filters by level in C++
(:func:`bridge.pulsar_io.set_client_log_level`), and :class:`NativeStdout` takes over
file descriptor 1: native writes go into a pipe, a thread reads its lines and logs each
through structlog (event ``pulsar_client``), and Python's ``sys.stdout`` moves to a
duplicate of the original stdout, so structlog and ``print`` write where they did.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
from types import TracebackType
from typing import Any

import structlog

# "2026-12-01 02:04:14.385 WARN  [139937478256320] ConsumerImpl:381 | message"
_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ (?P<level>DEBUG|INFO|WARN|ERROR)\s+"
    r"\[\d+\] (?P<source>\S+:\d+) \| (?P<message>.*)$"
)
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
}


def parse_line(line: str) -> tuple[int, dict[str, str]]:
    """The level and the fields of one line the C++ client printed.

    A line in any other shape (something else native wrote to stdout) is kept whole, as
    a warning: it was not meant to be there.
    """
    match = _LINE.match(line)
    if match is None:
        return logging.WARNING, {"source": "stdout", "message": line}
    return _LEVELS[match["level"]], {"source": match["source"], "message": match["message"]}


class NativeStdout:
    """File descriptor 1 taken over while the process runs (a context manager).

    Only where stdout is a real file descriptor; an in-process caller with a replaced
    ``sys.stdout`` (a test) gets a no-op.
    """

    def __init__(self) -> None:
        self._original: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NativeStdout:
        try:
            sys.stdout.fileno()
            os.fstat(1)
        except (OSError, ValueError, io.UnsupportedOperation):
            return self
        sys.stdout.flush()
        self._original = os.dup(1)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.close(write_end)
        # Python's own output goes on to the real stdout, line by line as before.
        sys.stdout = io.TextIOWrapper(
            io.FileIO(self._original, "w", closefd=False),
            encoding=sys.stdout.encoding,
            errors=sys.stdout.errors,
            line_buffering=True,
        )
        self._thread = threading.Thread(
            target=_relay, args=(read_end,), name="native-stdout", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        # Closing the pipe's only write end (fd 1) lets the thread read what is left and
        # stop. Whatever native code prints after this (a destructor at exit) goes to
        # stderr, unparsed but never mixed into stdout.
        os.dup2(2, 1)
        self._thread.join(timeout=5)
        self._thread = None


def _relay(read_end: int) -> None:
    log: Any = structlog.get_logger("pulsar")
    with open(read_end, "rb", closefd=True) as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                continue
            level, fields = parse_line(line)
            log.log(level, "pulsar_client", **fields)
