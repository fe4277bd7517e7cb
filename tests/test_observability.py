"""examples/observability/: the Prometheus rules and the Grafana dashboard, checked by
promtool (built by ``make tools`` into .tools/bin; without it these tests fail in CI and
skip elsewhere) and against the series the bridge really exports.

promtool parses every rule and unit-tests every alert (alerts.test.yml); the dashboard's
queries are handed to promtool as recording rules, so a query Grafana could not run fails
here; and every series a rule or panel reads must be one the bridge's registry (or the
broker) exports, so a renamed metric cannot leave a dead panel or a silent alert behind.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest

from bridge.observe import Metrics, RouteMetrics
from tests.support.ci import missing

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "observability"
PROMTOOL = ROOT / ".tools" / "bin" / "promtool"
# The broker's series the examples read (Apache Pulsar and pulsar-lite both export it).
BROKER_SERIES = frozenset({"pulsar_subscription_back_log"})
_SERIES = re.compile(r"\b((?:bridge_|pulsar_|route_served_model:)[a-z0-9_:]*)")
_QUOTED = re.compile(r'"[^"]*"')
# Grafana's variables, as Grafana would fill them in for a query.
_VARIABLES = {"$__rate_interval": "5m", "$route": "fraud|spam"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if not PROMTOOL.exists():
        missing("promtool is not installed: `make tools` builds it into .tools/bin")
    return subprocess.run(
        [str(PROMTOOL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES,
    )


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((EXAMPLES / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / "dashboard.json").read_text())
    return loaded


def dashboard_queries() -> list[str]:
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in _VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


@cache
def exported_series() -> frozenset[str]:
    """The series names the bridge's /metrics can show, from its registry's families."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{part}" for part in ("bucket", "sum", "count"))
        else:
            names.add(family.name)
    return frozenset(names)


def series_in(expr: str) -> set[str]:
    """The series an expression reads (label values left out: "pulsar-bridge.*")."""
    return set(_SERIES.findall(_QUOTED.sub('""', expr)))


def test_the_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_as_its_unit_test_expects() -> None:
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_the_alerts_cover_what_operators_page_on() -> None:
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    reads = {name: series_in(rule["expr"]) for name, rule in alerts.items()}
    assert reads == {
        "PulsarBridgeLagGrowing": {"pulsar_subscription_back_log"},
        "PulsarBridgeRoutePaused": {"bridge_route_paused"},
        "PulsarBridgeDeadLetterRate": {"bridge_dead_lettered_total", "bridge_events_in_total"},
        "PulsarBridgeConcurrencyLimitCut": {"bridge_endpoint_concurrency_limit"},
        "PulsarBridgeConcurrencyLimitFlapping": {"bridge_endpoint_concurrency_limit"},
        "PulsarBridgeTokenFailures": {"bridge_token_failures_total"},
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_rules_read_only_series_that_exist() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = exported_series() | BROKER_SERIES | recorded
    for rule in rules():
        unknown = series_in(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {unknown}"


def test_every_dashboard_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    queries = dashboard_queries()
    records = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(queries)} rules found" in checked.stdout


def test_dashboard_queries_read_only_series_that_exist() -> None:
    known = exported_series() | BROKER_SERIES
    for query in dashboard_queries():
        assert series_in(query), f"no series in {query}"
        unknown = series_in(query) - known
        assert not unknown, f"{query} reads {unknown}"


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int)
    assert board["uid"]
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert series_in(variables["route"]["definition"]) <= exported_series()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_the_dashboard_shows_the_rollout_split_and_every_alerted_series() -> None:
    read = set().union(*(series_in(q) for q in dashboard_queries()))
    alerted = set().union(*(series_in(r["expr"]) for r in rules() if "alert" in r))
    assert alerted <= read, f"alerted but not on the dashboard: {alerted - read}"
    assert "bridge_scored_events_total" in read


def test_the_bridges_exposition_passes_promtool_check_metrics() -> None:
    metrics = Metrics()
    route = RouteMetrics(metrics, "fraud")
    route.consumed(3)
    route.request(200, 0.01)
    route.scored("fraud-model-2", 3)
    route.token_failure()
    route.paused("down", None)
    metrics.endpoint_limit.labels("fraud-model").set(4)
    checked = promtool("check", "metrics", stdin=generate_latest(metrics.registry).decode())
    assert checked.returncode == 0, checked.stdout + checked.stderr
