"""An embedded pulsar-lite broker for the demo and the tests (extra ``embedded``).

pulsar-lite's own ``start_broker`` keeps one process per data path in a module singleton
and cannot restart or kill it; tests of broker loss need both, so this runs the same
binary directly. Its metrics listener is bound to loopback (it defaults to 0.0.0.0:8080)
through the ``pulsar-lite.toml`` it reads beside the data path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from bridge.lifecycle import Running


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel calls free right now (racy: the caller binds it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker(Running):
    """A pulsar-lite process on 127.0.0.1; ``restart`` keeps its port and data."""

    def __init__(
        self, workdir: Path, *, port: int | None = None, metrics_port: int | None = None
    ) -> None:
        from pulsar_lite.binary_finder import find_pulsar_lite_binary

        self.workdir = workdir
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self._binary = find_pulsar_lite_binary()
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "pulsar-lite.log"

    @property
    def url(self) -> str:
        return f"pulsar://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout_s: float = 20.0) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        # pulsar-lite reads its config from the data path's parent directory.
        (self.workdir / "pulsar-lite.toml").write_text(
            f'[metrics]\nenabled = true\naddr = "127.0.0.1:{self.metrics_port}"\n'
        )
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self._binary, "--addr", f"127.0.0.1:{self.port}", "--db-path", str(data / "db")],
            cwd=self.workdir,
            stdout=log,
            stderr=log,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        log.close()
        self._wait_listening(timeout_s)

    def _wait_listening(self, timeout_s: float) -> None:
        """Poll the port until the broker accepts connections (bounded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"pulsar-lite exited with {self._process.returncode}; see {self.log_path}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pulsar-lite not listening on {self.port} after {timeout_s}s"
                    ) from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(sig)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()
