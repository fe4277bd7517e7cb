"""The Databricks emulator in a process of its own, without auth, with optional latency.

A separate process keeps the endpoint's CPU out of the orchestrator's GIL and makes it
visible in the CPU accounting. Prints ``ready`` with the ``url``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse

from bench.procs import emit
from bridge.emulator import EmulatorServer, EmulatorState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    state = EmulatorState(auth=False)
    if args.latency_ms:
        state.faults.update({"latency_ms": args.latency_ms}, now=0)
    EmulatorServer(state).run(on_ready=lambda url: emit("ready", url=url))


if __name__ == "__main__":
    main()
