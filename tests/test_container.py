"""The container image: its recipe checked statically, then built and smoke-run for real.

``scripts/build-image.sh`` builds the image from Debian's packages and smoke-runs it (the demo
inside the image, and the daemon as PID 1 under SIGTERM). Warm (base and dependency layers
cached) that takes about 25 s, so it is part of the suite; cold (debootstrap, every
dependency downloaded) about 3.5 minutes. It needs root and podman: without them the test
fails in CI and skips elsewhere. The static tests hold the recipe to what the chart relies
on: a local base, a numeric non-root user, the daemon as PID 1 in exec form, nothing secret
in a layer, and a build script that installs its own tools.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.ci import missing

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
SCRIPT = ROOT / "scripts" / "build-image.sh"
CHART_VALUES = ROOT / "deploy" / "helm" / "pulsar-serving-bridge" / "values.yaml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        out.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return out


def final_stage() -> list[Instruction]:
    all_of_them = instructions()
    last_from = max(i for i, ins in enumerate(all_of_them) if ins.keyword == "FROM")
    return all_of_them[last_from:]


def only(keyword: str, stage: list[Instruction]) -> str:
    (found,) = [ins.arguments for ins in stage if ins.keyword == keyword]
    return found


def test_every_stage_builds_on_the_local_debian_base() -> None:
    ins = instructions()
    args = dict(a.arguments.split("=", 1) for a in ins if a.keyword == "ARG" and "=" in a.arguments)
    assert args["BASE_IMAGE"].startswith("localhost/")  # no registry is reachable
    for base in [a.arguments.split()[0] for a in ins if a.keyword == "FROM"]:
        assert base == "${BASE_IMAGE}"
    script = SCRIPT.read_text()
    assert "BASE_IMAGE=localhost/" in script
    assert '--build-arg "BASE_IMAGE=$BASE_IMAGE"' in script


def test_the_image_runs_as_the_numeric_non_root_user_the_chart_expects() -> None:
    user = only("USER", final_stage())
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert 0 not in (int(uid), int(gid))
    pod = yaml.safe_load(CHART_VALUES.read_text())["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))


def test_the_daemon_is_pid_1_in_exec_form() -> None:
    stage = final_stage()
    entrypoint = json.loads(only("ENTRYPOINT", stage))  # exec form: no shell in between
    assert entrypoint == ["/opt/pulsar-bridge/bin/pulsar-bridge"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(entrypoint[0]).name in scripts
    assert json.loads(only("CMD", stage)) == ["run", "-c", "/etc/pulsar-bridge"]


def test_the_root_filesystem_can_be_read_only() -> None:
    env = only("ENV", final_stage())
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # bytecode is compiled at build time instead
    assert "HOME=/tmp" in env  # the chart's only writable mount
    assert any("compileall" in ins.arguments for ins in instructions() if ins.keyword == "RUN")


def test_nothing_secret_is_baked_into_a_layer() -> None:
    for ins in instructions():
        if ins.keyword in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"SECRET|TOKEN|PASSWORD|CERT", ins.arguments, re.I), ins
        if ins.keyword == "RUN" and "PIP_CERT" in ins.arguments:
            # The build host's CA bundle arrives as a build secret, never a COPY.
            assert "--mount=type=secret,id=ca-bundle" in ins.arguments


def test_copied_sources_are_what_the_script_puts_in_the_context() -> None:
    script = SCRIPT.read_text()
    (archived,) = re.findall(r"git -C \"\$ROOT\" archive HEAD ([^\\\n]+)", script)
    (tarred,) = re.findall(r"-cf - ([^|]+)\|", script)
    context = set(archived.split())
    assert context == set(tarred.split())
    for ins in instructions():
        if ins.keyword == "COPY" and not ins.arguments.startswith("--from"):
            *sources, _ = shlex.split(ins.arguments)
            for source in sources:
                assert source in context
                assert (ROOT / source).exists()


def test_the_build_script_installs_what_it_runs() -> None:
    script = SCRIPT.read_text()
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    assert "set -euo pipefail" in script
    (tools,) = re.findall(r"for cmd in ([a-z ]+); do", script)
    assert set(tools.split()) == {"podman", "runc", "debootstrap"}
    assert 'apt-get install -y -qq "${missing[@]}"' in script
    assert "debian.org" not in script  # the mirror comes from this machine's apt sources


def test_the_smoke_run_uses_the_pod_hardening() -> None:
    script = SCRIPT.read_text()
    (locked,) = re.findall(r"run_locked\(\) \{\n(.*?)\n\}", script, re.S)
    flags = ("--read-only", "--read-only-tmpfs=false", "--tmpfs /tmp", "--user 10001:10001")
    for flag in (*flags, "--cap-drop ALL", "no-new-privileges"):
        assert flag in locked
    assert "examples/demo.py" in script
    assert "pod stop -t 60" in script  # SIGTERM, then the exit code must be 0


@pytest.mark.timeout(1500)
def test_the_image_builds_and_passes_its_smoke_run() -> None:
    if os.geteuid() != 0:
        missing("building the image needs root (apt-get, debootstrap, rootful podman)")
    env = {**os.environ, "FROM_WORKTREE": "1", "IMAGE": "localhost/pulsar-serving-bridge:test"}
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1400, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "demo OK" in output
    assert "200 events relayed by the daemon in the image" in output
    assert "SIGTERM -> exit 0" in output
