"""Prometheus alert rules, their promtool unit tests, the scrape and Alertmanager configs.

Runs the real tools: ``promtool check rules``, ``promtool test rules``,
``promtool check config`` (Debian package ``prometheus``) and ``amtool
check-config`` (Debian package ``prometheus-alertmanager``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_deploy_tools import (
    DEPLOY,
    PROMETHEUS_SERIES,
    check_promql_against_metrics,
    exposed_series,
    promql_selectors,
    require_tool,
    run,
)

PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "playguard.rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.test.yml"))

#: The alerts the deployment issue asks for, by rule name.
REQUIRED_ALERTS = {
    "PlayGuardNoEventsConsumed",  # no events consumed
    "PlayGuardDeadLetterRateHigh",  # dead-letter rate
    "PlayGuardAlertRateSurge",  # alert-rate surge per detector
    "PlayGuardAlertLatencyOverSLO",  # p99 latency over the SLO
    "PlayGuardWorkerDown",  # a worker down
    "PlayGuardAudioQCBacklog",  # audio QC backlog
}


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _alert_names() -> set[str]:
    return {r["alert"] for r in _rules() if "alert" in r}


def _unit_test_cases() -> list[dict]:
    return [case for path in RULE_TESTS for case in yaml.safe_load(path.read_text())["tests"]]


def test_promtool_check_rules():
    promtool = require_tool("promtool")
    result = run([promtool, "check", "rules", RULES])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    promtool = require_tool("promtool")
    assert len(RULE_TESTS) >= 2
    result = run([promtool, "test", "rules", *RULE_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_required_alerts_exist_with_severity_and_runbook():
    rules = _rules()
    assert REQUIRED_ALERTS <= _alert_names()
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["labels"]["service"] == "playguard"
        assert rule["annotations"]["runbook_url"].startswith("docs/OPERATIONS.md#")


def test_latency_rule_uses_the_one_second_slo():
    rule = next(r for r in _rules() if r.get("alert") == "PlayGuardAlertLatencyOverSLO")
    expr = " ".join(rule["expr"].split())
    assert expr.startswith("histogram_quantile(0.99,")
    assert "playguard_alert_latency_seconds_bucket" in expr
    assert expr.endswith("> 1")


def test_runbook_anchors_exist_in_operations_doc():
    doc = (DEPLOY.parent / "docs" / "OPERATIONS.md").read_text()
    headings = {
        line.lstrip("#").strip().lower() for line in doc.splitlines() if line.startswith("#")
    }
    for name in _alert_names():
        assert name.lower() in headings, f"docs/OPERATIONS.md has no heading {name}"


def test_rules_use_only_conventions_metric_names():
    series = exposed_series()
    problems = [p for r in _rules() for p in check_promql_against_metrics(r["expr"], series)]
    assert problems == []


def test_rule_unit_test_series_use_only_conventions_metric_names():
    series = exposed_series()
    problems = []
    for case in _unit_test_cases():
        for s in case["input_series"]:
            for sel in promql_selectors(s["series"]):
                if sel.metric not in series and sel.metric not in PROMETHEUS_SERIES:
                    problems.append(sel.metric)
    assert problems == []


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    fires, quiet = set(), set()
    for case in _unit_test_cases():
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == _alert_names()
    assert quiet == _alert_names()


def _mutated_run(tmp_path: Path, expr: str):
    """Run the unit tests against a copy of the rules whose every expr is ``expr``."""
    promtool = require_tool("promtool")
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"] = expr
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(doc))
    copies = []
    for path in RULE_TESTS:
        copies.append(tmp_path / "tests" / path.name)
        shutil.copy(path, copies[-1])
    return run([promtool, "test", "rules", *copies])


def _failed_alertnames(output: str) -> set[str]:
    return {
        line.split("alertname:")[1].split(",")[0].strip()
        for line in output.splitlines()
        if "alertname:" in line
    }


def test_unit_tests_catch_rules_that_never_fire(tmp_path):
    """Control: with every rule disabled, every alert's firing case fails."""
    result = _mutated_run(tmp_path, "vector(1) == 0")
    assert result.returncode != 0
    assert _failed_alertnames(result.stdout + result.stderr) == _alert_names()


def test_unit_tests_catch_rules_that_always_fire(tmp_path):
    """Control: with every rule always true, every alert's quiet case fails."""
    result = _mutated_run(tmp_path, "vector(1)")
    assert result.returncode != 0
    assert _failed_alertnames(result.stdout + result.stderr) == _alert_names()


def test_promtool_check_config_of_compose_prometheus():
    promtool = require_tool("promtool")
    result = run([promtool, "check", "config", PROM / "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    # The config loads the rules file the tests cover.
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_prometheus_scrapes_every_compose_worker():
    """Job "playguard" (the one the rules expect) targets each worker service."""
    import re

    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "playguard")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    workers = {
        name
        for name, svc in compose["services"].items()
        if svc.get("command") == ["worker"] or name.startswith("worker")
    }
    assert len(workers) >= 2
    assert targets == {f"{w}:9308" for w in workers}
    for rule in _rules():
        for m in re.finditer(r'job="([^"]+)"', rule["expr"]):
            assert m.group(1) == "playguard"


def test_amtool_check_config():
    amtool = require_tool("amtool")
    result = run([amtool, "check-config", DEPLOY / "alertmanager" / "alertmanager.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_inhibitions_name_real_alerts():
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    names = _alert_names()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"]:
            if matcher.startswith("alertname="):
                assert matcher.split("=", 1)[1].strip('"') in names


@pytest.mark.parametrize("bad", ["sum(rate(playguard_alerts_total[5m]) > ", "foo{"])
def test_promtool_check_rules_rejects_broken_expr(tmp_path, bad):
    """Control: the check really parses PromQL."""
    promtool = require_tool("promtool")
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": bad}]}]}))
    result = run([promtool, "check", "rules", path])
    assert result.returncode != 0
