"""The Databricks emulator in a process of its own, without auth, with optional latency
and capacity.

A separate process keeps the endpoint's CPU out of the orchestrator's GIL and makes it
visible in the CPU accounting. Prints ``ready`` with the ``url``; SIGTERM stops it. Its
``/_emulator/`` control routes (stats, faults) stay reachable while it runs.
"""

from __future__ import annotations

import argparse

from bench.procs import emit
from bridge.emulator import EmulatorServer, EmulatorState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--capacity", type=int, help="invocations answered at once; beyond them 429 at once"
    )
    args = parser.parse_args()
    state = EmulatorState(auth=False)
    faults: dict[str, object] = {}
    if args.latency_ms:
        faults["latency_ms"] = args.latency_ms
    if args.capacity is not None:
        faults["capacity"] = args.capacity
    if faults:
        state.faults.update(faults, now=0)
    EmulatorServer(state).run(on_ready=lambda url: emit("ready", url=url))


if __name__ == "__main__":
    main()
