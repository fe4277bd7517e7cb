"""The example systemd units: the settings the daemon relies on, and systemd's own verdict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from bridge.config_bridge import DaemonSettings
from bridge.secrets import Secret
from tests.support.ci import missing

UNITS = Path(__file__).resolve().parent.parent / "examples" / "systemd"
PLAIN = UNITS / "pulsar-bridge.service"
TEMPLATE = UNITS / "pulsar-bridge@.service"
INSTALLED_BINARY = "/opt/pulsar-bridge/bin/pulsar-bridge"
CREDENTIAL = "databricks-client-secret"

Unit = dict[str, dict[str, list[str]]]

HARDENING = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
}


def parse_unit(path: Path) -> Unit:
    """Section -> key -> every value in order (ExecReload= and friends may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: keep settings on one line"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], defaultdict(list))
            continue
        assert section is not None, f"{path.name}:{number}: setting outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=VALUE"
        section[key.strip()].append(value.strip())
    return unit


def one(unit: Unit, key: str) -> str:
    values = unit["Service"][key]
    assert len(values) == 1, f"{key}= set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span in the forms these units use: "60", "60s", "2min"."""
    for suffix, scale in (("min", 60.0), ("s", 1.0)):
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * scale
    return float(value)


@pytest.fixture(params=[PLAIN, TEMPLATE], ids=["plain", "template"])
def unit_path(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_service_contract(unit_path: Path) -> None:
    unit = parse_unit(unit_path)
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "Restart") == "on-failure"
    assert seconds(one(unit, "WatchdogSec")) > 0
    assert unit["Service"]["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_stop_timeout_outlasts_the_drain_grace(unit_path: Path) -> None:
    grace = DaemonSettings().drain_grace_s
    assert seconds(one(parse_unit(unit_path), "TimeoutStopSec")) > grace


def test_hardening(unit_path: Path) -> None:
    service = parse_unit(unit_path)["Service"]
    present = {key: service[key] for key in HARDENING if key in service}
    assert present == {key: [value] for key, value in HARDENING.items()}


def test_exec_lines() -> None:
    plain, template = parse_unit(PLAIN), parse_unit(TEMPLATE)
    assert one(plain, "ExecStart") == f"{INSTALLED_BINARY} run --config /etc/pulsar-bridge"
    assert one(template, "ExecStart") == f"{INSTALLED_BINARY} run --config /etc/pulsar-bridge/%i"
    # The template is the plain unit per instance, not a second set of settings to keep in step.
    assert plain["Service"].keys() == template["Service"].keys()


@pytest.mark.parametrize(
    ("path", "source"),
    [
        (PLAIN, f"/etc/pulsar-bridge/credentials/{CREDENTIAL}"),
        (TEMPLATE, f"/etc/pulsar-bridge/%i/credentials/{CREDENTIAL}"),
    ],
    ids=["plain", "template"],
)
def test_client_secret_arrives_as_a_credential(path: Path, source: str) -> None:
    assert one(parse_unit(path), "LoadCredential") == f"{CREDENTIAL}:{source}"
    reference = f"file:${{CREDENTIALS_DIRECTORY}}/{CREDENTIAL}"
    assert f'client_secret = "{reference}"' in path.read_text()


def test_the_documented_secret_reference_resolves(tmp_path: Path) -> None:
    (tmp_path / CREDENTIAL).write_text("s3cret\n")
    reference = f"file:${{CREDENTIALS_DIRECTORY}}/{CREDENTIAL}"
    secret = Secret(reference, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert secret.reveal() == "s3cret"


def _runnable_copy(source: Path, directory: Path, binary: Path) -> Path:
    # verify checks that every Exec*= binary exists; point them at this checkout's script.
    target = directory / source.name
    target.write_text(source.read_text().replace(INSTALLED_BINARY, str(binary)))
    return target


@pytest.mark.parametrize(
    ("source", "verified_name"),
    [(PLAIN, PLAIN.name), (TEMPLATE, "pulsar-bridge@example.service")],
    ids=["plain", "template"],
)
def test_systemd_analyze_verify(source: Path, verified_name: str, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing("systemd-analyze not found (Debian package: systemd)")
    binary = Path(sys.executable).parent / "pulsar-bridge"
    if not binary.exists():
        missing(f"{binary} not found: install the project (pip install -e .)")
    _runnable_copy(source, tmp_path, binary)
    # An instance name next to the template makes verify expand %i as systemd would.
    result = subprocess.run(
        [tool, "verify", "--man=no", str(tmp_path / verified_name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and unparsable values are only warnings (exit 0): fail on any output.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
