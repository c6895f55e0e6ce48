"""The container image: Dockerfile lint (hadolint), structure, build context, lock file.

No Docker engine runs here, so the image is not built in the tests; they check
what can be checked statically with the real linter and the project files.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata

import pytest

from tests.test_deploy_tools import REPO, require_tool, run

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "deploy" / "requirements.lock"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _hadolint(*args) -> list[dict]:
    hadolint = require_tool("hadolint")
    result = run([hadolint, "--no-color", "--format", "json", *args])
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def test_hadolint_reports_nothing():
    """Zero findings at every level (error, warning, info, style)."""
    assert _hadolint(DOCKERFILE) == []


def test_hadolint_ignores_are_exactly_the_justified_ones():
    """With inline ignores disabled, only the rules justified in comments appear."""
    findings = _hadolint("--disable-ignore-pragma", DOCKERFILE)
    codes = {f["code"] for f in findings}
    pragmas = set(re.findall(r"# hadolint ignore=([\w,]+)", DOCKERFILE.read_text()))
    ignored = {c for p in pragmas for c in p.split(",")}
    assert codes == ignored
    for code in ignored:
        # Each ignored rule is explained in a comment beside it.
        assert re.search(rf"#.*{code} \(", DOCKERFILE.read_text()), code


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    """Control: the linter runs and reports findings at warning level."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y ffmpeg\nUSER root\n")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3009"} & codes
    assert "DL3002" in codes  # last USER should not be root


def test_multi_stage_slim_python_311_base():
    stages = _stages()
    assert len(stages) >= 2
    bases = [s[0][1].split()[0] for s in stages]
    for base in bases:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    assert "AS builder" in stages[0][0][1]
    # The runtime stage installs only wheels built in the builder, offline.
    runtime = stages[-1]
    runs = " ".join(arg for ins, arg in runtime if ins == "RUN")
    assert "--no-index" in runs
    assert "from=builder" in runs
    assert "ffmpeg" in runs and "libsndfile1" in runs


def test_runs_as_non_root_user():
    runtime = _stages()[-1]
    users = [arg for ins, arg in runtime if ins == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # The UID is created in the image and matches the Kubernetes runAsUser.
    assert re.search(rf"--uid {user}\b", DOCKERFILE.read_text())


def test_entrypoint_healthcheck_and_port():
    instructions = dict(_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["playguard"]
    assert json.loads(instructions["CMD"]) == ["worker"]
    assert instructions["EXPOSE"] == "9308"
    health = instructions["HEALTHCHECK"]
    assert "/metrics" in health and "PLAYGUARD_METRICS_PORT" in health
    cmd = json.loads(health.split(" CMD ", 1)[1])
    assert cmd[0] == "python"


def test_no_secret_in_the_image():
    """No credential in ENV/ARG/LABEL, and the build context excludes .env and keys."""
    for ins, arg in _instructions():
        if ins in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|SASL|_KEY)\b", arg, re.I), arg
    patterns = DOCKERIGNORE.read_text().splitlines()
    assert patterns[patterns.index("*")] == "*"  # allow-list: exclude everything first
    for needed in ["**/.env", "**/*.pem", "**/*.key"]:
        assert needed in patterns


def test_build_context_includes_every_copied_path():
    """Each COPY source from the context exists and is re-included in .dockerignore."""
    patterns = [
        p.strip() for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = []
    for ins, arg in _instructions():
        if ins == "COPY" and "--from=" not in arg:
            sources.extend(arg.split()[:-1])
    assert sources
    for src in sources:
        src = src.rstrip("/")
        assert src in allowed, f"{src} is copied but excluded by .dockerignore"
        if src == "README.md":
            continue  # written by the README issue; checked when it exists
        assert (REPO / src).exists(), src


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"unpinned line in requirements.lock: {line!r}"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_lock_pins_every_direct_dependency_at_its_pyproject_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _lock()
    for req in project["dependencies"]:
        name, _, version = req.partition("==")
        assert version, f"pyproject dependency not pinned: {req}"
        key = name.strip().lower().replace("_", "-")
        assert pins.get(key) == version.strip(), (
            f"{key}: lock has {pins.get(key)}, pyproject {version}; "
            "run deploy/lock-requirements.sh"
        )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_holds_the_whole_runtime_closure():
    """Every dependency of a locked package (per installed metadata) is locked too.

    Catches a lock left stale after a dependency was added. Versions of
    transitive packages are not compared with the venv: a fresh venv may
    resolve newer ones unless it is installed with ``-c deploy/requirements.lock``.
    """
    from packaging.requirements import Requirement

    pins = {_canonical(k): v for k, v in _lock().items()}
    missing = {}
    for name in pins:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed in the venv", pytrace=False)
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if _canonical(req.name) not in pins:
                missing[req.name] = name
    assert missing == {}, "run deploy/lock-requirements.sh"


def _healthcheck_cmd() -> list[str]:
    health = dict(_instructions())["HEALTHCHECK"]
    return json.loads(health.split(" CMD ", 1)[1])


def test_healthcheck_passes_on_a_live_metrics_endpoint_and_fails_without_one():
    """Run the image's HEALTHCHECK command against a real /metrics endpoint."""
    import os
    import sys

    from stream.metrics import Metrics

    cmd = [sys.executable, *_healthcheck_cmd()[1:]]
    server, thread = Metrics().serve("127.0.0.1", 0)
    port = server.server_port
    env = {**os.environ, "PLAYGUARD_METRICS_PORT": str(port)}
    try:
        ok = run(cmd, env=env)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert ok.returncode == 0, ok.stderr
    down = run(cmd, env=env)  # nothing listens on the port any more
    assert down.returncode != 0
    assert "Connection refused" in down.stderr or "URLError" in down.stderr
