"""Smoke test of the deployed configuration: a real worker with the Compose environment.

No Docker engine runs here, so the worker runs as a local process with the
environment of the ``worker-1`` service of ``deploy/compose.yaml`` (as
``docker compose config`` resolves it), pointed at the embedded broker. Checked:

- the image's HEALTHCHECK command passes against the running worker (once it
  holds partitions);
- the series the alert rules need exist from start-up, at 0, under the label
  values the rules match (``PlayGuardNoEventsConsumed`` selects the plays topic
  by a regex on the prefixed topic name);
- on SIGTERM the worker exits within the Compose ``stop_grace_period`` and the
  Kubernetes ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
import yaml

from tests.test_deploy_docker import _healthcheck_cmd
from tests.test_deploy_tools import DEPLOY, exposed_series, require_tool, run

pytestmark = pytest.mark.integration


def _compose_worker_env() -> dict[str, str]:
    binary = require_tool("compose")
    result = run([binary, "-f", DEPLOY / "compose.yaml", "config", "--format", "json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]["worker-1"]["environment"]


def _grace_periods_s() -> tuple[float, float]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    compose_grace = compose["x-worker"]["stop_grace_period"]
    assert compose_grace.endswith("s")
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    k8s_grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    return float(compose_grace[:-1]), float(k8s_grace)


@pytest.fixture(scope="module")
def compose_worker(broker, tmp_path_factory):
    from stream.config import Settings
    from tests.kafka_helpers import WorkerProcess

    env = _compose_worker_env()
    data_dir = Settings().data_dir  # the host folder the compose stack mounts at /data
    env.update(
        PLAYGUARD_BOOTSTRAP_SERVERS=broker.bootstrap,
        # Own topics and consumer group on the session's shared broker.
        PLAYGUARD_TOPIC_PREFIX="deploysmoke.",
        PLAYGUARD_APP_ID="deploysmoke",
        PLAYGUARD_DATA_DIR=str(data_dir),
        PLAYGUARD_QC__ALLOWED_ROOTS=json.dumps([str(data_dir / "audio")]),
    )
    log = tmp_path_factory.mktemp("deploy-smoke") / "worker.log"
    worker = WorkerProcess(env, log=log).start()
    try:
        # /metrics answers as soon as the process starts; wait until the worker
        # holds partitions of plays and fetches from them (lag series appear),
        # so the checks below see a running worker, not a starting one.
        deadline = time.monotonic() + 60
        while 'topic="deploysmoke.plays"' not in _lag_lines(worker.scrape()):
            if time.monotonic() > deadline:
                pytest.fail(f"worker never fetched from deploysmoke.plays; log: {log}")
            time.sleep(0.25)
        yield worker
    finally:
        worker.stop()


def _lag_lines(text: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if line.startswith("playguard_consumer_lag_records{")
    )


def test_image_healthcheck_passes_on_the_running_worker(compose_worker):
    cmd = [sys.executable, *_healthcheck_cmd()[1:]]
    result = run(cmd, env={"PLAYGUARD_METRICS_PORT": str(compose_worker.metrics_port)})
    assert result.returncode == 0, result.stderr


def test_alerting_series_exist_at_start_under_the_rules_label_values(compose_worker):
    from prometheus_client.parser import text_string_to_metric_families

    samples = [
        s for fam in text_string_to_metric_families(compose_worker.scrape()) for s in fam.samples
    ]
    names = {s.name for s in samples if s.name.startswith("playguard_")}
    # The running worker exposes only names the rules and dashboard were checked against.
    assert names <= set(exposed_series())
    assert "playguard_build_info" in names

    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "playguard.rules.yml").read_text())
    no_events = next(
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "PlayGuardNoEventsConsumed"
    )
    topic_regex = re.search(r'topic=~"([^"]+)"', no_events["expr"]).group(1)
    consumed = {
        s.labels["topic"]: s.value
        for s in samples
        if s.name == "playguard_events_consumed_total"
    }
    matched = [t for t in consumed if re.fullmatch(topic_regex, t)]
    assert matched == ["deploysmoke.plays"], consumed
    assert consumed["deploysmoke.plays"] == 0.0  # present at 0: the rule can fire
    reasons = {
        s.labels["reason"] for s in samples if s.name == "playguard_deadletter_total"
    }
    assert {"invalid_json", "schema_error", "too_late"} <= reasons


def test_sigterm_stops_within_the_grace_periods(compose_worker):
    compose_grace, k8s_grace = _grace_periods_s()
    t0 = time.monotonic()
    code = compose_worker.stop(timeout=min(compose_grace, k8s_grace))
    elapsed = time.monotonic() - t0
    assert code is not None, f"worker still running after {elapsed:.1f} s (killed)"
    assert elapsed < compose_grace
