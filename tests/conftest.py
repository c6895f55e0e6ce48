"""Shared fixtures: the real-data folder and the embedded broker.

Tests that need ``../shared/data`` skip with a reason when it is absent, and
fail instead under ``CI=true`` (CONVENTIONS.md, "Tests and what runs where").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stream.config import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"


def _data_dir() -> Path:
    return Settings().data_dir


def require_data(*parts: str) -> Path:
    """Path under the real-data folder; skip (or fail under CI) when missing."""
    p = _data_dir().joinpath(*parts)
    if not p.exists():
        msg = f"real data not found at {p} (set PLAYGUARD_DATA_DIR)"
        if IN_CI:
            pytest.fail(msg + " - required under CI=true")
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder (``../shared/data`` by default)."""
    return require_data()


@pytest.fixture(scope="session")
def listening_dir() -> Path:
    """``<data>/listening``."""
    return require_data("listening")


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """``<data>/audio``."""
    return require_data("audio")


@pytest.fixture(scope="session")
def broker():
    """A Tansu broker on a free loopback port for the whole session."""
    from stream.broker import EmbeddedBroker

    b = EmbeddedBroker(log_path=Path(os.environ.get("PLAYGUARD_BROKER_LOG", "/dev/null")))
    b.start()
    yield b
    b.stop()
