"""Child processes of the benchmark and what /proc says about them.

Every helper (reader, relays, pacer, emulator) is ``python -m bench.<module>`` and speaks
JSON lines on stdout (:func:`emit`); :class:`Worker` collects them from a reader thread so
the orchestrator waits for an event instead of sleeping. CPU time and resident memory come
from ``/proc/<pid>`` (no psutil): ``utime + stime`` of all threads, ``VmRSS`` and ``VmHWM``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bridge.embedded import EmbeddedBroker
from tests.support.harness import BridgeProcess

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, flushed: the helpers' only way to talk to the orchestrator."""
    print(json.dumps({"event": event, **fields}), flush=True)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of every thread of ``pid`` so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def machine_busy_seconds() -> float:
    """CPU seconds spent by all cores outside idle and iowait since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) * _TICK_S


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid`` in kB; empty once it is gone."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


class Worker:
    """``python -m bench.<module> ARGS`` with its JSON lines collected."""

    def __init__(self, module: str, args: Sequence[str]) -> None:
        self.name = module
        self.lines: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"bench.{module}", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                continue  # the Pulsar C++ client's console lines
            with self._changed:
                if isinstance(parsed, dict):
                    self.lines.append(parsed)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self._stderr = [*self._stderr[-40:], raw]

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The first line with ``event``; RuntimeError if the worker exits or time runs out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.get("event") == event:
                        return line
                remaining = deadline - time.monotonic()
                exited = self.process.poll() is not None and not self._threads[0].is_alive()
                if remaining <= 0 or exited:
                    raise RuntimeError(
                        f"bench.{self.name}: no {event!r} within {timeout:.0f}s "
                        f"(exit code {self.process.poll()}); stderr:\n{''.join(self._stderr)}"
                    )
                self._changed.wait(min(remaining, 1.0))

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for thread in self._threads:
            thread.join(5)


class BrokerProcess(Protocol):
    """What a scenario needs of a broker: where clients connect, its process for CPU."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...


class Broker(EmbeddedBroker):
    """The embedded broker, with its process id for CPU accounting."""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid


class Bridge(BridgeProcess):
    """The bridge process of the tests' harness, with its process id."""

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid


@dataclass
class CpuWindow:
    """CPU seconds of named processes (and of the whole machine) over one measured window."""

    pids: Mapping[str, int]
    started: float = field(default_factory=time.monotonic)
    _before: dict[str, float] = field(default_factory=dict)
    _machine_before: float = 0.0

    def __post_init__(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._machine_before = machine_busy_seconds()

    def finish(self) -> dict[str, float]:
        """Cores used on average by each process, ``ours`` in total and ``other`` (the rest).

        ``other`` is everything else on the machine: another engineer's test suite running
        at the same time shows up here and explains a slow repetition.
        """
        elapsed = max(time.monotonic() - self.started, 1e-9)
        used = {
            name: (cpu_seconds(pid) - self._before[name]) / elapsed
            for name, pid in self.pids.items()
        }
        machine = (machine_busy_seconds() - self._machine_before) / elapsed
        ours = sum(used.values())
        return {
            **{k: round(v, 3) for k, v in used.items()},
            "ours": round(ours, 3),
            "other": round(max(0.0, machine - ours), 3),
        }


class MemorySampler:
    """Samples a process's RSS every ``interval_s`` from a thread; ``VmHWM`` at the end."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.samples: list[tuple[float, int]] = []  # (monotonic s, RSS kB)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            rss = memory_kb(self._pid).get("VmRSS")
            if rss is not None:
                self.samples.append((time.monotonic(), rss))

    def finish(self) -> dict[str, Any]:
        """Stop sampling; peak RSS, and RSS at each quarter of the run, in MB."""
        peak_kb = memory_kb(self._pid).get("VmHWM", 0)
        self._stop.set()
        self._thread.join()
        rss = [kb for _, kb in self.samples]
        quarters = [rss[min(len(rss) - 1, len(rss) * q // 4)] for q in (1, 2, 3, 4)] if rss else []
        return {
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "rss_mb_by_quarter": [round(kb / 1024, 1) for kb in quarters],
        }


def linger() -> None:
    """Wait for the orchestrator's SIGTERM, so the process's CPU time stays readable."""
    threading.Event().wait()
