"""The Grafana dashboard and its provisioning.

Every PromQL expression of the dashboard may reference only series that
``stream.metrics.Metrics`` exposes (CONVENTIONS.md, "Metrics"), group only by
bounded labels, and no panel may list flagged entities.
"""

from __future__ import annotations

import json
import re

import yaml

from tests.test_deploy_tools import (
    DEPLOY,
    check_promql_against_metrics,
    exposed_series,
    promql_grouping_labels,
    promql_selectors,
)

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "playguard.json"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return out


def _exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]


def _variable_queries(dash: dict) -> list[str]:
    """PromQL selectors inside Grafana variable queries (label_values(metric, label))."""
    out = []
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert m, f"unsupported variable query {query!r}"
            out.append(m.group(1))
    return out


def test_dashboard_identity_and_datasource_variable():
    dash = _dashboard()
    assert dash["uid"] == "playguard-overview"
    assert len(dash["uid"]) <= 40  # Grafana's uid limit
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Every panel and target goes through the variable, none hard-codes a uid.
    for panel in _panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_panel_ids_unique_and_layout_within_grid():
    panels = _panels(_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
    # Panels of one grid row never overlap.
    cells = set()
    for p in panels:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_every_expression_uses_conventions_metric_names():
    dash = _dashboard()
    series = exposed_series()
    exprs = _exprs(dash) + _variable_queries(dash)
    assert len(exprs) >= 15
    problems = [p for e in exprs for p in check_promql_against_metrics(e, series)]
    assert problems == []


def test_required_panels_are_present():
    """Each panel the deployment issue lists is backed by its metric."""
    dash = _dashboard()
    used = {
        sel.metric
        for panel in _panels(dash)
        for t in panel.get("targets", [])
        for sel in promql_selectors(t["expr"])
    }
    required = {
        "playguard_events_consumed_total",  # events/s by topic
        "playguard_alerts_total",  # alerts by detector and severity
        "playguard_alert_latency_seconds_bucket",  # latency quantiles
        "playguard_deadletter_total",  # dead-letter rate
        "playguard_audio_files_checked_total",  # QC outcomes
        "playguard_integrated_loudness_lufs_bucket",  # loudness distribution
        "playguard_consumer_lag_records",  # consumer lag
        "playguard_state_entities",  # entities held in state
    }
    assert required <= used
    exprs = _exprs(dash)
    assert any(
        "sum by (topic)" in e and "playguard_events_consumed_total" in e for e in exprs
    )
    assert any(
        "sum by (detector, severity)" in e and "playguard_alerts_total" in e for e in exprs
    )
    latency = [e for e in exprs if "playguard_alert_latency_seconds_bucket" in e]
    assert all(e.startswith("histogram_quantile(") for e in latency)
    assert {re.match(r"histogram_quantile\(([\d.]+)", e).group(1) for e in latency} >= {
        "0.5",
        "0.99",
    }


def test_no_panel_lists_flagged_entities():
    """No entity id can show: group-bys use bounded labels only, and no table panel."""
    dash = _dashboard()
    bounded = {"topic", "reason", "kind", "detector", "severity", "stage", "entity_type",
               "outcome", "le", "version", "partition", "job", "instance"}
    for panel in _panels(dash):
        assert panel["type"] != "table", panel["title"]
        for target in panel.get("targets", []):
            assert promql_grouping_labels(target["expr"]) <= bounded, target["expr"]
            legend = target.get("legendFormat", "")
            assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) <= bounded


def test_provisioning_points_at_the_dashboard_and_datasource():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "playguard.yml").read_text())
    (provider,) = prov["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def _as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by sample values."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace('"$job"', '"playguard"')
    )


def test_every_expression_parses_as_promql(tmp_path):
    """promtool parses each expression, loaded as a recording rule."""
    from tests.test_deploy_tools import require_tool, run

    promtool = require_tool("promtool")
    exprs = _exprs(_dashboard())
    assert all("$" not in _as_promql(e) for e in exprs)
    rules = [{"record": f"dashboard:panel_expr_{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
