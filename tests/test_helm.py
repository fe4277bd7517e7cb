"""The Helm chart: linted, rendered with several value sets, every object validated offline.

Kubernetes' own kinds are checked with kubernetes-validate's strict schemas (an unknown field
is an error) for the oldest Kubernetes the chart supports and the newest the package knows;
KEDA's ScaledObject and TriggerAuthentication and the ServiceMonitor against the
``openAPIV3Schema`` of the CRDs vendored in deploy/schemas/, closed the same way. The rendered
bridge.toml and routes are then loaded by the bridge's own config loader, from the files the
Deployment mounts. helm is built by ``make tools`` into .tools/bin: without it these tests
fail in CI and skip elsewhere (tests/support/ci.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate.utils import latest_version  # type: ignore[import-untyped]

from bridge.config import load_config
from tests.support.ci import missing

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "pulsar-serving-bridge"
SCHEMAS = ROOT / "deploy" / "schemas"
SECRETS_ROOT = "/run/secrets/pulsar-bridge"
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}
OLDEST_KUBERNETES = "1.27"  # Chart.yaml's kubeVersion

Obj = dict[str, Any]
EXAMPLE: Obj = yaml.safe_load((CHART / "examples" / "fraud.yaml").read_text())


def merged(base: Obj, over: Obj) -> Obj:
    """``over`` laid on ``base`` the way helm merges a values file into the defaults."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def _route(topics: list[str], subscription: str, **source: Any) -> Obj:
    return {
        "source": {"topics": topics, "subscription": subscription, **source},
        "endpoint": {"url": "http://scorer.models.svc:5001/invocations", "max_in_flight": 8},
        "result": {"topic": f"{topics[0]}-results"},
        "failure": {"retry_statuses": [429, 503], "nack_delay_ms": 500},
    }


VALUE_SETS: dict[str, Obj] = {
    "example": EXAMPLE,
    "keda-scale-to-zero": {
        "bridge": {"daemon": {"drain_grace_s": 12.5}},
        "routes": {
            "fraud": _route(
                ["persistent://risk/cards/tx-eu", "persistent://risk/cards/tx-us"], "fraud"
            ),
            "spam_v2": _route(
                ["persistent://chat/msgs/in"], "spam", subscription_type="key_shared"
            ),
        },
        "keda": {
            "enabled": True,
            "minReplicaCount": 0,
            "maxReplicaCount": 6,
            "activationMsgBacklogThreshold": 5,
            "routes": {
                "spam_v2": {
                    "msgBacklogThreshold": 250,
                    "activationMsgBacklogThreshold": 0,
                    "isPartitionedTopic": True,
                }
            },
            "bearerToken": {"secretName": "pulsar-admin-token", "secretKey": "jwt"},
            "fallback": {"failureThreshold": 3, "replicas": 2},
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}}
                }
            },
        },
    },
    "federation-monitoring": {
        "routes": EXAMPLE["routes"],
        "bridge": {
            "pulsar": {
                "service_url": "pulsar+ssl://pulsar.example.internal:6651",
                "admin_url": None,
                "tls_trust_certs_file": f"{SECRETS_ROOT}/pulsar/ca.crt",
                "auth": {"type": "token", "token": f"file:{SECRETS_ROOT}/pulsar/token"},
            },
            "databricks": {
                "auth_type": "oidc-federation",
                "client_id": None,
                "client_secret": None,
                "oidc_token_file": "/var/run/secrets/tokens/databricks",
                "analytics": {
                    "host": "https://adb-456.azuredatabricks.net",
                    "token": f"file:{SECRETS_ROOT}/analytics/pat",
                },
            },
        },
        "secretMounts": [
            {"name": "pulsar", "secretName": "pulsar-client"},
            {
                "name": "analytics",
                "secretName": "analytics-pat",
                "items": [{"key": "pat", "path": "pat"}],
            },
        ],
        "oidcToken": {"enabled": True, "audience": "databricks"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "keda": {
            "enabled": True,
            "adminURL": "https://pulsar.example.internal:8443",
            "authenticationRef": "pulsar-admin",
            "extraMetadata": {"authModes": "bearer"},
        },
        "http": {"port": 9100},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
        ],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
    },
    "plain": {
        "routes": EXAMPLE["routes"],
        "replicaCount": 3,
        "podDisruptionBudget": {"enabled": False},
        "serviceAccount": {"create": False, "name": "bridge"},
        "image": {"repository": "registry.example.com/psb", "tag": "1.2.3"},
    },
}


@pytest.fixture(scope="module")
def helm() -> Path:
    built = ROOT / ".tools" / "bin" / "helm"
    found = built if built.exists() else shutil.which("helm")
    if found is None:
        missing("helm is not installed: `make tools` builds it into .tools/bin")
    return Path(found)


def run_helm(
    helm: Path, command: str, values: Obj, tmp: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    values_file = tmp / f"values-{command}.json"  # JSON is YAML
    values_file.write_text(json.dumps(values))
    args = [
        str(helm),
        command,
        *(["r"] if command == "template" else []),
        str(CHART),
        "-f",
        str(values_file),
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def render(helm: Path, values: Obj, tmp: Path) -> list[Obj]:
    done = run_helm(helm, "template", values, tmp, "--kube-version", OLDEST_KUBERNETES)
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def one(objects: list[Obj], kind: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@cache
def crd_schema(file_name: str) -> Obj:
    crd = yaml.safe_load((SCHEMAS / file_name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    schema: Obj = _closed(version["schema"]["openAPIV3Schema"])
    return schema


def _closed(schema: Any) -> Any:
    """Unknown fields become errors, as `kubectl apply --validate=strict` reports them."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    open_by_design = "additionalProperties" in out or out.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "properties" in out and not open_by_design:
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_passes(helm: Path, name: str, tmp_path: Path) -> None:
    done = run_helm(helm, "lint", VALUE_SETS[name], tmp_path, "--strict")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_object_matches_its_schema(helm: Path, name: str, tmp_path: Path) -> None:
    objects = render(helm, VALUE_SETS[name], tmp_path)
    for obj in objects:
        crd = CRDS.get((obj["apiVersion"], obj["kind"]))
        if crd is not None:
            jsonschema.Draft4Validator(crd_schema(crd)).validate(obj)
            continue
        for version in (OLDEST_KUBERNETES, latest_version()):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_checks_reject_a_misspelt_field(helm: Path, tmp_path: Path) -> None:
    """The validation above is only worth something if a typo in a template fails it."""
    objects = render(helm, VALUE_SETS["keda-scale-to-zero"], tmp_path)
    scaled = one(objects, "ScaledObject")
    scaled["spec"]["minReplicas"] = 1  # KEDA calls it minReplicaCount
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.Draft4Validator(crd_schema(CRDS[("keda.sh/v1alpha1", "ScaledObject")])).validate(
            scaled
        )
    deployment = one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesystem"):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)


def config_dir_as_mounted(objects: list[Obj], tmp: Path) -> Path:
    """The config directory the pod sees, with secret files where the pod has them."""
    data = one(objects, "ConfigMap")["data"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (config_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    secrets_here = tmp / "secrets"
    config = tmp / "config"
    for item in config_volume["configMap"]["items"]:
        target = config / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]].replace(SECRETS_ROOT, str(secrets_here)))
    for ref in secret_files(data["bridge.toml"]):
        local = secrets_here / Path(ref).relative_to(SECRETS_ROOT)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("a-secret-value\n")
        local.chmod(0o600)
    return config


def secret_files(bridge_toml: str) -> list[str]:
    """Every file under the chart's secret mounts that bridge.toml names (file: or a path)."""
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, str) and node.removeprefix("file:").startswith(f"{SECRETS_ROOT}/"):
            refs.append(node.removeprefix("file:"))

    walk(tomllib.loads(bridge_toml))
    return refs


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_config_loads_in_the_bridge(helm: Path, name: str, tmp_path: Path) -> None:
    objects = render(helm, VALUE_SETS[name], tmp_path)
    config = load_config(config_dir_as_mounted(objects, tmp_path), env={})
    assert sorted(r.name for r in config.routes) == sorted(VALUE_SETS[name]["routes"])
    port = VALUE_SETS[name].get("http", {}).get("port", 9464)
    assert config.bridge.observe.http_bind == f"0.0.0.0:{port}"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_secret_references_point_into_mounted_secrets(
    helm: Path, name: str, tmp_path: Path
) -> None:
    objects = render(helm, VALUE_SETS[name], tmp_path)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    refs = secret_files(one(objects, "ConfigMap")["data"]["bridge.toml"])
    assert refs
    for ref in refs:
        (mount,) = [m for m in container["volumeMounts"] if ref.startswith(m["mountPath"] + "/")]
        secret = volumes[mount["name"]]["secret"]
        key = ref.removeprefix(mount["mountPath"] + "/")
        assert "items" not in secret or key in {i["path"] for i in secret["items"]}
        assert mount["readOnly"] is True
        assert secret["defaultMode"] == 0o440  # group-readable for fsGroup, nobody else


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pod_runs_the_daemon_hardened_and_probed(helm: Path, name: str, tmp_path: Path) -> None:
    objects = render(helm, VALUE_SETS[name], tmp_path)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    bridge = tomllib.loads(one(objects, "ConfigMap")["data"]["bridge.toml"])

    assert container["args"] == containerfile_cmd()
    (http,) = container["ports"]
    assert bridge["observe"]["http_bind"] == f"0.0.0.0:{http['containerPort']}"
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {p["port"] for p in probes.values()} == {http["name"]}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"

    assert pod["terminationGracePeriodSeconds"] > bridge["daemon"]["drain_grace_s"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/pulsar-bridge"]["readOnly"] is True
    assert [p for p, m in mounts.items() if not m.get("readOnly")] == ["/tmp"]
    keda = VALUE_SETS[name].get("keda", {}).get("enabled", False)
    assert ("replicas" in deployment["spec"]) is not keda  # KEDA owns the count when on


def containerfile_cmd() -> list[str]:
    for line in (ROOT / "deploy" / "container" / "Containerfile").read_text().splitlines():
        if line.startswith("CMD "):
            cmd: list[str] = json.loads(line.removeprefix("CMD "))
            return cmd
    raise AssertionError("the Containerfile has no CMD")


def test_scaled_object_has_a_pulsar_trigger_per_route_subscription(
    helm: Path, tmp_path: Path
) -> None:
    values = VALUE_SETS["keda-scale-to-zero"]
    objects = render(helm, values, tmp_path)
    scaled = one(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 6)
    auth = one(objects, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "bearerToken", "name": "pulsar-admin-token", "key": "jwt"}
    ]
    triggers = {
        (t["metadata"]["topic"], t["metadata"]["subscription"]): t for t in scaled["triggers"]
    }
    assert sorted(triggers) == [
        ("persistent://chat/msgs/in", "spam"),
        ("persistent://risk/cards/tx-eu", "fraud"),
        ("persistent://risk/cards/tx-us", "fraud"),
    ]
    for (topic, _), trigger in triggers.items():
        meta = trigger["metadata"]
        partitioned = topic == "persistent://chat/msgs/in"  # the spam_v2 overrides
        assert trigger["type"] == "pulsar"
        assert meta["adminURL"] == "http://pulsar-broker.pulsar.svc.cluster.local:8080"
        assert meta["activationMsgBacklogThreshold"] == ("0" if partitioned else "5")
        assert meta["authModes"] == "bearer"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert meta["msgBacklogThreshold"] == ("250" if partitioned else "1000")
        assert meta["isPartitionedTopic"] == str(partitioned).lower()


def test_selectors_find_the_pods(helm: Path, tmp_path: Path) -> None:
    objects = render(
        helm,
        VALUE_SETS["federation-monitoring"] | {"podDisruptionBudget": {"enabled": True}},
        tmp_path,
    )
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items()
        <= pod_labels.items()
    )
    monitor = one(objects, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }


def test_a_route_change_rolls_the_pods(helm: Path, tmp_path: Path) -> None:
    def checksum(values: Obj) -> str:
        pod = one(render(helm, values, tmp_path), "Deployment")["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    changed = merged(EXAMPLE, {"routes": {"fraud": {"batch": {"max_events": 50}}}})
    assert checksum(EXAMPLE) != checksum(changed)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (merged(EXAMPLE, {"bridge": {"pulsar": {"admin_url": None}}}), "keda.adminURL"),
        (merged(EXAMPLE, {"bridge": {"observe": {"http_bind": "127.0.0.1:1"}}}), "http.port"),
        (
            merged(EXAMPLE, {"routes": {"fraud": {"source": {"subscription_type": "failover"}}}}),
            "one active consumer",
        ),
        (merged(EXAMPLE, {"keda": {"routes": {"fruad": {"msgBacklogThreshold": 5}}}}), "fruad"),
        ({}, "at least one route"),
        (
            merged(
                EXAMPLE, {"routes": {"fraud": {"source": {"topics": ["non-persistent://a/b/c"]}}}}
            ),
            "keeps no backlog",
        ),
        (merged(EXAMPLE, {"keda": {"minReplicas": 0}}), "'minReplicas' not allowed"),
        ({"routes": {"a/b": _route(["t"], "s")}}, "route name"),
        (EXAMPLE | {"secretMounts": [{"name": "Bad_Name", "secretName": "x"}]}, "secretMounts"),
    ],
)
def test_chart_refuses_what_cannot_work(
    helm: Path, values: Obj, message: str, tmp_path: Path
) -> None:
    done = run_helm(helm, "template", values, tmp_path)
    assert done.returncode != 0
    assert message in done.stderr
