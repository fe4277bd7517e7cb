"""A real Apache Pulsar standalone broker on loopback, for tests that need more than pulsar-lite.

Thin wrapper over ``scripts/apache-pulsar.sh``, which fetches the distribution through Maven
into a cache outside the repository (once), writes the broker's config under ``data_dir`` and
waits until the admin API answers. Ports are picked free on 127.0.0.1 (below the ephemeral
range, so that a restart finds them free again) unless given.

    require_apache_pulsar()  # fails in CI, skips locally, when Apache Pulsar cannot run here
    with start_apache_pulsar(tmp_path / "pulsar", auth_token=True) as broker:
        client = pulsar.Client(
            broker.service_url, authentication=pulsar.AuthenticationToken(broker.admin_token)
        )

:class:`ApachePulsarBroker` is the restartable form the tests' ``broker`` fixture uses:
``restart()`` stops the broker and starts it again on the same data dir and ports.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bridge.embedded import free_port
from bridge.lifecycle import Running
from tests.support.ci import missing

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "apache-pulsar.sh"

# A cold fetch is ~10 s here and startup ~8 s, but the script's own readiness bound is 180 s.
_START_TIMEOUT_S = 600.0
_STOP_TIMEOUT_S = 120.0
_TOKEN_TIMEOUT_S = 60.0


class ApachePulsarError(RuntimeError):
    """The script failed; the message carries its stderr (with the broker's log tail)."""


@dataclass(frozen=True)
class ApachePulsar:
    """A running standalone broker started by :func:`start_apache_pulsar`."""

    service_url: str
    admin_url: str
    data_dir: Path
    pid: int
    # With tls=True: the TLS endpoints and the CA certificate that signed the server's.
    service_url_tls: str | None = None
    admin_url_tls: str | None = None
    tls_ca_cert: Path | None = None
    # With auth_token=True: the superuser ("admin") token; other roles via token().
    admin_token: str | None = None

    def token(self, subject: str) -> str:
        """A token for role ``subject``, signed with this broker's secret key."""
        if self.admin_token is None:
            raise ApachePulsarError("broker was started without auth_token=True")
        return _run_script(["token", str(self.data_dir), subject], _TOKEN_TIMEOUT_S).strip()

    def admin_headers(self) -> dict[str, str]:
        """HTTP headers for the admin API (empty when authentication is off)."""
        if self.admin_token is None:
            return {}
        return {"Authorization": f"Bearer {self.admin_token}"}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bound; safe to call more than once."""
        _run_script(["stop", str(self.data_dir)], _STOP_TIMEOUT_S)

    def __enter__(self) -> ApachePulsar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def apache_pulsar_available() -> bool:
    """True when a JDK >= 21 is present and Maven is (or the distribution is already cached)."""
    try:
        result = subprocess.run(
            ["bash", str(SCRIPT), "check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def require_apache_pulsar() -> None:
    """Fail (in CI) or skip (locally) the calling test when Apache Pulsar cannot run here.

    A green CI run must not have silently skipped the real broker.
    """
    if apache_pulsar_available():
        return
    reason = (
        "Apache Pulsar cannot run here: scripts/apache-pulsar.sh check found no JDK >= 21 "
        "(set PULSAR_JAVA_HOME) or neither Maven nor a cached distribution "
        "(~/.cache/pulsar-serving-bridge)"
    )
    missing(reason)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 if unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports(count: int, taken: set[int]) -> list[int]:
    """Free ports below the ephemeral range.

    A broker restarted on the same ports must find them free again: a port from the
    ephemeral range could meanwhile become the local end of some client's outgoing
    connection (even a client's own reconnect attempt to it, a TCP self-connect).
    """
    low, high = 20000, _ephemeral_low()
    rng = random.Random()
    ports: list[int] = []
    if high - low < 1000:
        while len(ports) < count:
            candidate = free_port()
            if candidate not in taken and candidate not in ports:
                ports.append(candidate)
        return ports
    while len(ports) < count:
        candidate = rng.randrange(low, high)
        if candidate not in taken and candidate not in ports and _bindable(candidate):
            ports.append(candidate)
    return ports


def _run_script(args: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(
            ["bash", str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ApachePulsarError(f"apache-pulsar.sh {args[0]} timed out after {timeout}s") from exc
    if result.returncode != 0:
        raise ApachePulsarError(
            f"apache-pulsar.sh {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result.stdout


def _parse_env(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("PULSAR_"):
            values[key] = value
    return values


def start_apache_pulsar(
    data_dir: Path,
    *,
    tls: bool = False,
    auth_token: bool = False,
    port: int | None = None,
    web_port: int | None = None,
    tls_port: int | None = None,
    web_tls_port: int | None = None,
) -> ApachePulsar:
    """Start a standalone broker whose config, data and logs all live under ``data_dir``.

    Reusing a ``data_dir`` restarts the broker on its existing data (and TLS material and
    secret key). Raises :class:`ApachePulsarError` if it is not ready in time.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    given = (port, web_port, tls_port, web_tls_port)
    picked = iter(_free_ports(4, {p for p in given if p is not None}))
    env = dict(os.environ)
    for name, value in zip(
        ("PULSAR_PORT", "PULSAR_WEB_PORT", "PULSAR_TLS_PORT", "PULSAR_WEB_TLS_PORT"),
        given,
        strict=True,
    ):
        env[name] = str(value if value is not None else next(picked))
    args = ["start", str(data_dir)]
    if tls:
        args.append("--tls")
    if auth_token:
        args.append("--auth-token")
    values = _parse_env(_run_script(args, _START_TIMEOUT_S, env))

    admin_token = None
    if token_file := values.get("PULSAR_ADMIN_TOKEN_FILE"):
        admin_token = Path(token_file).read_text().strip()
    ca_cert = values.get("PULSAR_CA_CERT")
    return ApachePulsar(
        service_url=values["PULSAR_SERVICE_URL"],
        admin_url=values["PULSAR_ADMIN_URL"],
        data_dir=data_dir.resolve(),
        pid=int(values["PULSAR_PID"]),
        service_url_tls=values.get("PULSAR_SERVICE_URL_TLS"),
        admin_url_tls=values.get("PULSAR_ADMIN_URL_TLS"),
        tls_ca_cert=Path(ca_cert) if ca_cert else None,
        admin_token=admin_token,
    )


# Every ApachePulsarBroker made in this process, for the test session's timing summary.
CREATED: list[ApachePulsarBroker] = []


class ApachePulsarBroker(Running):
    """A standalone broker that keeps its data dir and ports across restarts.

    The tests' ``broker`` fixture hands this out with the same small interface as
    :class:`bridge.embedded.EmbeddedBroker` (``url``, ``restart()``), plus ``admin_url``.
    """

    def __init__(self, data_dir: Path, *, tls: bool = False, auth_token: bool = False) -> None:
        self.data_dir = data_dir
        self._tls = tls
        self._auth_token = auth_token
        self._ports = _free_ports(4, set())
        self._running: ApachePulsar | None = None
        # Wall time of each start (the first one includes a cold fetch, if any).
        self.start_times_s: list[float] = []
        CREATED.append(self)

    @property
    def running(self) -> ApachePulsar:
        if self._running is None:
            raise ApachePulsarError(f"the broker in {self.data_dir} is not running")
        return self._running

    @property
    def url(self) -> str:
        return self.running.service_url

    @property
    def admin_url(self) -> str:
        return self.running.admin_url

    def start(self) -> ApachePulsar:
        port, web_port, tls_port, web_tls_port = self._ports
        began = time.monotonic()
        self._running = start_apache_pulsar(
            self.data_dir,
            tls=self._tls,
            auth_token=self._auth_token,
            port=port,
            web_port=web_port,
            tls_port=tls_port,
            web_tls_port=web_tls_port,
        )
        self.start_times_s.append(time.monotonic() - began)
        return self._running

    def stop(self) -> None:
        if self._running is not None:
            self._running.stop()
            self._running = None

    def restart(self) -> None:
        """SIGTERM and start again on the same data and ports (clients reconnect)."""
        self.stop()
        self.start()

    def create_namespace(self, name: str, *, deduplication: bool) -> None:
        """Create namespace ``name`` (``tenant/namespace``) with deduplication on or off
        (effectively-once result topics need it on)."""
        admin = f"{self.admin_url}/admin/v2/namespaces/{name}"
        headers = self.running.admin_headers()
        httpx.put(admin, json={}, headers=headers, timeout=30).raise_for_status()
        httpx.post(
            f"{admin}/deduplication", json=deduplication, headers=headers, timeout=30
        ).raise_for_status()

    def create_partitioned_topic(self, topic: str, partitions: int) -> None:
        """Create ``persistent://...`` ``topic`` with ``partitions`` partitions."""
        path = topic.removeprefix("persistent://")
        httpx.put(
            f"{self.admin_url}/admin/v2/persistent/{path}/partitions",
            json=partitions,
            headers=self.running.admin_headers(),
            timeout=30,
        ).raise_for_status()
