"""Builds the stage models and runs both stages in process.

``process(batch) -> alerts`` is the whole core with no Kafka: the worker runs
the two stages in separate agents (one model per input partition), while
:class:`Pipeline` chains them in one process for tests and ``playguard eval``.

Model sets (``--models``):

* ``full``: every available play detector (the default);
* ``rules``: the count-rules baseline only (:mod:`stream.rules`);
* ``noop``: models that keep minimal state and raise nothing (benchmarks).
"""

from __future__ import annotations

from stream.batch import PlayBatch
from stream.config import Settings
from stream.rules import NullCatalogModel, RulesAccountModel
from stream.schemas import Alert
from stream.stage import StageModel

MODEL_SETS = ("full", "rules", "noop")


class NoopAccountModel:
    """Account-stage model that does nothing (benchmark baseline)."""

    stage = "account"
    entity_types: tuple[str, ...] = ("account",)
    detector_names: tuple[str, ...] = ()

    def process(self, batch: PlayBatch) -> list[Alert]:
        """Return no alerts."""
        return []

    def state_dict(self) -> dict:
        """Empty state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""

    def entity_counts(self) -> dict[str, int]:
        """No entities."""
        return {"account": 0}


def build_account_model(settings: Settings, models: str = "full") -> StageModel:
    """One account-stage model (one per ``plays`` partition).

    Raises:
        ValueError: on an unknown model set.
    """
    if models == "noop":
        return NoopAccountModel()
    if models == "rules":
        return RulesAccountModel(
            settings.detection.rule_track_plays_per_day, settings.detection.rule_plays_per_month
        )
    if models == "full":
        try:
            from stream.fraud.models import AccountFraudModel
        except ImportError:  # play-fraud models not installed: rules only
            return RulesAccountModel(
                settings.detection.rule_track_plays_per_day, settings.detection.rule_plays_per_month
            )
        return AccountFraudModel(settings)
    raise ValueError(f"unknown model set {models!r}; choose one of {MODEL_SETS}")


def build_catalog_model(settings: Settings, models: str = "full") -> StageModel:
    """One catalog-stage model (one per ``plays.by_artist`` partition).

    Raises:
        ValueError: on an unknown model set.
    """
    if models in ("noop", "rules"):
        return NullCatalogModel()
    if models == "full":
        try:
            from stream.fraud.models import CatalogFraudModel
        except ImportError:
            return NullCatalogModel()
        return CatalogFraudModel(settings)
    raise ValueError(f"unknown model set {models!r}; choose one of {MODEL_SETS}")


class Pipeline:
    """Both stages in one process: ``process(batch) -> alerts``.

    Equivalent to one worker owning every partition. Used by tests and by
    ``playguard eval`` so they run the worker's own code path.
    """

    def __init__(self, settings: Settings | None = None, models: str = "full"):
        self.settings = settings or Settings()
        self.account = build_account_model(self.settings, models)
        self.catalog = build_catalog_model(self.settings, models)

    def process(self, batch: PlayBatch) -> list[Alert]:
        """Account stage then catalog stage on one micro-batch."""
        alerts = self.account.process(batch)
        alerts.extend(self.catalog.process(batch))
        return alerts


def warm_up(settings: Settings, models: str = "full") -> float:
    """Compile the detectors' numba kernels before consuming.

    For the ``full`` set, compiles every detector kernel
    (:func:`detectors.warm_up`, about 8 s here), then runs two small synthetic
    batches (64 plays of 8 accounts with IPs, devices and countries, two
    minutes apart, so each batch spans hours as a replay's batches do; three
    days apart) through throwaway models, so the first real
    micro-batches do not pay JIT compilation (seconds, which would show in the
    alert latency). The worker's own models are untouched.

    Returns:
        Seconds spent.
    """
    import time

    t0 = time.perf_counter()
    if models == "full":
        import detectors

        detectors.warm_up()
    # two batches three days apart, with IPs, devices and countries, so the
    # identity, day-rotation and expiry kernels of the fraud features compile
    # too; each spans two hours (the rotating sketches' multi-period paths)
    now = time.time() - 4 * 86400
    pipe = Pipeline(settings, models)
    for day in (0, 3):
        rows = [dict(event_id=f"warm-{day}-{i}", ts=now + day * 86400 + 120.0 * i, account_id=f"warm-acc-{i % 8}",
                     track_id=f"warm-track-{i % 5}", artist_id=f"warm-artist-{i % 3}", ms_played=31_000 + i,
                     ip=f"192.0.2.{i % 4 + day}", device_id=f"warm-dev-{i % 3 + day}",
                     country=("SE", "DE", "FR")[(i + day) % 3])
                for i in range(64)]
        pipe.process(PlayBatch.from_dicts(rows))
    return time.perf_counter() - t0
