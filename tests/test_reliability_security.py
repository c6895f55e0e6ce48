"""Security checks (issue 13, "Security"): no unpickling, Kafka TLS/SASL settings,
configurable metrics bind address, secrets kept out of logs.

No network is used except loopback sockets of the metrics endpoint.
"""

from __future__ import annotations

import ast
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from stream.config import Settings

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("stream", "detectors", "audio_qc")
#: modules whose loading executes or reconstructs arbitrary objects from bytes
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib",
                     "jsonpickle", "copyreg"}


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 20, "package sources not found"
    return files


def _unsafe_nodes(tree: ast.AST) -> list[str]:
    """Every import of a forbidden module and every call that unpickles."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in FORBIDDEN_MODULES:
                bad.append(f"from {node.module}")
            # e.g. "from multiprocessing.reduction import ForkingPickler"
            bad += [f"from {node.module} import {a.name}" for a in node.names if "pickl" in a.name.lower()]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name in ("loads", "load", "Unpickler") and owner in FORBIDDEN_MODULES:
                bad.append(f"{owner}.{name}()")
            if name == "__import__" and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in FORBIDDEN_MODULES:
                bad.append(f"__import__({node.args[0].value!r})")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    bad.append(f"{name}(allow_pickle=...)")
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in FORBIDDEN_MODULES:
                bad.append(f"import_module({node.args[0].value!r})")
    return bad


def test_the_scanner_catches_every_unpickling_pattern():
    src = """
import pickle
import marshal as m
from shelve import open as so
from multiprocessing.reduction import ForkingPickler
import numpy as np
x = pickle.loads(b"")
y = np.load("a.npy", allow_pickle=True)
z = __import__("dill")
"""
    found = _unsafe_nodes(ast.parse(src))
    assert len(found) == 7, found
    assert _unsafe_nodes(ast.parse("import numpy as np\nnp.load('a.npy', allow_pickle=False)\nimport json")) == []


def test_no_module_imports_pickle_or_unpickles():
    offenders = {}
    for p in _sources():
        bad = _unsafe_nodes(ast.parse(p.read_text(), filename=str(p)))
        if bad:
            offenders[str(p.relative_to(REPO))] = bad
    assert offenders == {}


# ---------------------------------------------------------------- Kafka security settings
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed CA certificate and a client key pair (openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "client.key", d / "client.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=playguard-test"], check=True, capture_output=True)
    return cert, key


def test_sasl_ssl_settings_from_environment(monkeypatch, tls_files):
    cert, key = tls_files
    env = {"PLAYGUARD_SECURITY_PROTOCOL": "SASL_SSL", "PLAYGUARD_SASL_MECHANISM": "SCRAM-SHA-512",
           "PLAYGUARD_SASL_USERNAME": "svc-playguard", "PLAYGUARD_SASL_PASSWORD": "s3cr3t-Pa55",
           "PLAYGUARD_SSL_CAFILE": str(cert), "PLAYGUARD_SSL_CERTFILE": str(cert),
           "PLAYGUARD_SSL_KEYFILE": str(key), "PLAYGUARD_BOOTSTRAP_SERVERS": "kafka-0:9093"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings(_env_file=None)
    kw = s.kafka_client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc-playguard" and kw["sasl_plain_password"] == "s3cr3t-Pa55"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "playguard-test"),),)]

    # the password never shows in a repr, a log line or a JSON dump of the settings
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s) and "s3cr3t" not in s.model_dump_json()

    # aiokafka accepts the keyword arguments (constructing a client does no I/O)
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def build():
        c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, **kw)
        p = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, **kw)
        return c, p

    import asyncio

    c, p = asyncio.run(build())
    assert c._client._security_protocol == "SASL_SSL" and c._client._sasl_mechanism == "SCRAM-SHA-512"
    assert p.client._ssl_context is ctx

    # Faust gets the same credentials
    import faust

    from stream.app import _faust_credentials

    cred = _faust_credentials(s)
    assert isinstance(cred, faust.SASLCredentials)
    assert cred.username == "svc-playguard" and cred.password == "s3cr3t-Pa55"
    assert str(cred.mechanism.value if hasattr(cred.mechanism, "value") else cred.mechanism) == "SCRAM-SHA-512"
    assert cred.ssl_context.get_ca_certs() == ctx.get_ca_certs()
    assert cred.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert str(getattr(cred.protocol, "value", cred.protocol)) == "SASL_SSL"


def test_ssl_only_and_plaintext_settings(monkeypatch, tls_files):
    import faust

    from stream.app import _faust_credentials

    cert, _ = tls_files
    monkeypatch.setenv("PLAYGUARD_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PLAYGUARD_SSL_CAFILE", str(cert))
    s = Settings(_env_file=None)
    kw = s.kafka_client_kwargs()
    assert kw["security_protocol"] == "SSL" and "sasl_mechanism" not in kw
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    cred = _faust_credentials(s)
    assert isinstance(cred, faust.SSLCredentials)
    assert cred.context.get_ca_certs()[0]["subject"] == ((("commonName", "playguard-test"),),)

    monkeypatch.setenv("PLAYGUARD_SECURITY_PROTOCOL", "PLAINTEXT")
    s = Settings(_env_file=None)
    assert s.kafka_client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert _faust_credentials(s) is None

    monkeypatch.setenv("PLAYGUARD_SECURITY_PROTOCOL", "SSL_BUT_WRONG")
    with pytest.raises(ValueError):
        Settings(_env_file=None)


def test_missing_ca_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYGUARD_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PLAYGUARD_SSL_CAFILE", str(tmp_path / "absent.pem"))
    with pytest.raises(OSError):
        Settings(_env_file=None).kafka_client_kwargs()


# ---------------------------------------------------------------- metrics bind address
def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.read().decode()


def test_metrics_bind_address_is_configurable(monkeypatch):
    from stream.metrics import Metrics

    assert Settings(_env_file=None).metrics_host == "0.0.0.0"  # documented default: all interfaces
    monkeypatch.setenv("PLAYGUARD_METRICS_HOST", "127.0.0.2")
    monkeypatch.setenv("PLAYGUARD_METRICS_PORT", "0")
    s = Settings(_env_file=None)
    assert s.metrics_host == "127.0.0.2"
    m = Metrics()
    m.init_labels(["plays"])
    server, _ = m.serve(s.metrics_host, s.metrics_port)
    try:
        port = server.server_port
        assert server.server_address[0] == "127.0.0.2"
        assert "playguard_events_consumed_total" in _get(f"http://127.0.0.2:{port}/metrics")
        # bound to that address only: the same port on another loopback address refuses
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        server.shutdown()
        server.server_close()
