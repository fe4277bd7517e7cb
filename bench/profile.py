"""Sample the bridge with py-spy and reduce the samples to its hot spots.

py-spy is not a project dependency: install it into the venv to profile
(``.venv/bin/pip install py-spy``). It attaches to the running bridge (``--nonblocking``,
so the process is never paused) and writes collapsed stacks, one ``frames count`` line
per distinct stack. :func:`summarize` turns them into self and inclusive percentages per
``file:function``, per thread, and self time per package: the first things to read
before optimising the hot path. Idle samples (a thread waiting in epoll or on a lock) are
not recorded, so percentages are of the time some thread was running Python code.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_STDLIB = re.compile(r"^.*/lib/python3\.\d+/(?!site-packages/)")
_SITE = re.compile(r"^.*/site-packages/")
ROOT = Path(__file__).resolve().parent.parent
# A sample of a thread that runs but has no Python frame: in the bridge, the Pulsar C++
# client's I/O thread (it has a Python thread state because it runs our callbacks).
NATIVE = "<native: no Python frame>"


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


RATE_HZ = 250


def start(
    pid: int, output: Path, *, gil: bool = False, rate: int = RATE_HZ
) -> subprocess.Popen[bytes]:
    """``py-spy record`` on ``pid`` until SIGINT, collapsed stacks to ``output``.

    ``gil`` keeps only samples of the thread holding the GIL: where the one core that
    Python code can use goes, including callbacks on the client's threads.
    """
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
    return subprocess.Popen(
        [
            *(executable, "record", "--pid", str(pid), "--rate", str(rate)),
            *("--format", "raw", "--output", str(output)),
            *("--threads", "--nonblocking", "--full-filenames"),
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def short_file(path: str) -> str:
    """``bridge/relay.py``, ``httpx/_models.py``, ``stdlib asyncio/events.py``."""
    if _SITE.match(path):
        return _SITE.sub("", path)
    if _STDLIB.match(path):
        return "stdlib " + _STDLIB.sub("", path)
    root = f"{ROOT}/"
    return path.removeprefix(root)


def frame_name(frame: str) -> str:
    """``file:function`` of one py-spy frame, without the line number."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{short_file(match['file'])}:{match['function']}"


def package(name: str) -> str:
    """The package a ``file:function`` belongs to; bridge modules stay separate."""
    if name == NATIVE:
        return name
    file = name.split(":", 1)[0].removeprefix("stdlib ")
    if file.startswith("bridge/"):
        return file
    return file.split("/", 1)[0].removesuffix(".py")


def summarize(
    raw: Path, *, events: int | None = None, rate_hz: int = RATE_HZ, top: int = 25
) -> dict[str, Any]:
    """Self and inclusive percentages of the samples in a py-spy raw file.

    With ``events`` (relayed while py-spy was attached) each row also gets its time in
    microseconds per event: samples / ``rate_hz`` / ``events``. In a GIL-holder profile
    that is the Python time per event each function costs the one core Python can use.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        names = [frame_name(f) for f in frames] or [NATIVE]
        total += count
        threads[thread.split(": ", 1)[-1]] += count
        self_time[names[-1]] += count
        packages[package(names[-1])] += count
        for name in set(names):
            inclusive[name] += count

    def table(counter: Counter[str], limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name, n in counter.most_common(limit):
            row: dict[str, Any] = {"name": name, "samples": n, "percent": round(100 * n / total, 1)}
            if events:
                row["us_per_event"] = round(n / rate_hz / events * 1e6, 2)
            rows.append(row)
        return rows

    if total == 0:
        return {"samples": 0}
    bridge_only = Counter({k: v for k, v in inclusive.items() if k.startswith("bridge/")})
    return {
        "samples": total,
        "events": events,
        "threads": table(threads, 10),
        "self": table(self_time, top),
        "self_by_package": table(packages, 15),
        "inclusive_bridge": table(bridge_only, top),
        "inclusive": table(inclusive, top * 2),
    }


def render(summary: dict[str, Any], top: int = 25) -> str:
    """The summary as plain text, for the console and ``profile.txt``."""
    if not summary.get("samples"):
        return "no samples\n"
    events = summary.get("events")
    lines = [
        f"{summary['samples']} samples (active threads only)"
        + (f" over {events:,} events; us/ev = microseconds per event" if events else ""),
        "",
    ]
    for title, key, limit in (
        ("by thread", "threads", 10),
        ("self time by package / bridge module", "self_by_package", 15),
        ("self time (where the samples were)", "self", top),
        ("inclusive time of bridge functions (the pipeline's stages)", "inclusive_bridge", top),
        ("inclusive time, everything", "inclusive", top * 2),
    ):
        lines.append(f"{title}:")
        for row in summary[key][:limit]:
            cost = f"{row['us_per_event']:6.1f} us/ev  " if "us_per_event" in row else ""
            lines.append(f"  {row['percent']:5.1f}%  {cost}{row['name']}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """``python -m bench.profile RAW [EVENTS]``: print the summary of an existing raw file."""
    events = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(render(summarize(Path(sys.argv[1]), events=events)))


if __name__ == "__main__":
    main()
