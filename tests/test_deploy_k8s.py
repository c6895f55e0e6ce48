"""deploy/k8s: schema validation with kubernetes-validate, and the operational invariants.

kubernetes-validate checks each resource against the OpenAPI schemas of a
Kubernetes release it ships (strict: unknown fields are errors); it needs no
cluster.
"""

from __future__ import annotations

import os

import pytest
import yaml

from tests.test_deploy_tools import DEPLOY

K8S = DEPLOY / "k8s"
#: Kubernetes release validated against (kubernetes-validate ships its schemas).
K8S_VERSION = "1.33.0"


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        msg = "kubernetes-validate not installed: pip install kubernetes-validate (dev extra)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (required under CI=true)", pytrace=False)
        pytest.skip(msg)
    return kubernetes_validate


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _resources() -> list[dict]:
    docs = []
    for name in _kustomization()["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def _one(kind: str) -> dict:
    (doc,) = [d for d in _resources() if d["kind"] == kind]
    return doc


def test_kustomization_lists_every_manifest():
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_every_manifest_passes_strict_schema_validation():
    kv = _kubernetes_validate()
    from kubernetes_validate.utils import all_versions

    assert K8S_VERSION in all_versions()
    kinds = set()
    for doc in _resources():
        kv.validate(doc, K8S_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"].__setitem__("replicas", "two"),
        lambda d: d["spec"]["template"]["spec"].__setitem__("terminationGracePeriod", 30),
    ],
    ids=["wrong-type", "unknown-field"],
)
def test_validation_rejects_a_broken_deployment(mutate):
    """Control: a wrong type and an unknown field (strict) are both rejected."""
    kv = _kubernetes_validate()
    doc = _one("Deployment")
    mutate(doc)
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


def _config() -> dict[str, str]:
    return _one("ConfigMap")["data"]


def _container() -> dict:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_replicas_at_most_partitions():
    assert 1 <= _one("Deployment")["spec"]["replicas"] <= int(_config()["PLAYGUARD_PARTITIONS"])


def test_grace_period_longer_than_commit_and_snapshot_intervals():
    grace = _one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    config = _config()
    assert grace > float(config["PLAYGUARD_COMMIT_INTERVAL_S"])
    assert grace > float(config["PLAYGUARD_SNAPSHOT_INTERVAL_S"])
    # and longer than a rebalance the stopping pod takes part in
    assert grace > float(config["PLAYGUARD_BROKER_REBALANCE_TIMEOUT_S"])


def test_no_state_on_pod_disk():
    """Deployment, no PersistentVolumeClaim; only emptyDir scratch volumes."""
    kinds = {d["kind"] for d in _resources()}
    assert "StatefulSet" not in kinds and "PersistentVolumeClaim" not in kinds
    for volume in _one("Deployment")["spec"]["template"]["spec"].get("volumes", []):
        assert set(volume) == {"name", "emptyDir"}, volume


def test_probes_hit_the_metrics_endpoint():
    container = _container()
    port = int(_config()["PLAYGUARD_METRICS_PORT"])
    (named,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert named["containerPort"] == port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/metrics" and get["port"] == "metrics"


def test_resources_requests_and_limits():
    res = _container()["resources"]
    assert set(res["requests"]) == {"cpu", "memory"}
    assert set(res["limits"]) == {"cpu", "memory"}


def test_pdb_and_service_select_the_worker_pods():
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = _one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    svc = _one("Service")["spec"]
    assert svc["selector"].items() <= labels.items()
    assert svc["ports"][0]["targetPort"] == "metrics"


def test_prometheus_scrape_annotations():
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == _config()["PLAYGUARD_METRICS_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_config_from_configmap_and_sasl_from_a_secret_reference():
    container = _container()
    refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
    assert refs == [_one("ConfigMap")["metadata"]["name"]]
    env = {e["name"]: e for e in container["env"]}
    for name, key in [("PLAYGUARD_SASL_USERNAME", "username"), ("PLAYGUARD_SASL_PASSWORD", "password")]:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "playguard-kafka-sasl", "key": key}
    # No credential is committed: no Secret manifest, no value in the ConfigMap.
    assert "Secret" not in {d["kind"] for d in _resources()}
    assert not [k for k in _config() if "PASSWORD" in k or "USERNAME" in k]
    assert _config()["PLAYGUARD_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_configmap_values_parse_as_playguard_settings(monkeypatch):
    """The ConfigMap is a valid PLAYGUARD_* environment for stream.config.Settings."""
    from stream.config import Settings

    for key in list(os.environ):
        if key.startswith("PLAYGUARD_"):
            monkeypatch.delenv(key)
    for key, value in _config().items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    assert settings.partitions == int(_config()["PLAYGUARD_PARTITIONS"])
    assert settings.security_protocol == "SASL_SSL"
    assert [str(p) for p in settings.qc.allowed_roots] == ["/mnt/audio"]


def test_pod_runs_non_root_with_read_only_root_fs():
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    sc = _container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
