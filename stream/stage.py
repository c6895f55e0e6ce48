"""The processing-core contract: a stage model turns a micro-batch into alerts.

The worker, the tests and ``playguard eval`` all drive the same objects:

* the **account stage** model holds per-account state (and IP / device
  sketches); it sees a partition of ``plays`` keyed by ``account_id``;
* the **catalog stage** model holds track, artist and lockstep-group state; it
  sees a partition of ``plays.by_artist``.

No Kafka or Faust import here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from stream.batch import PlayBatch
from stream.schemas import Alert


@runtime_checkable
class StageModel(Protocol):
    """What one stage's model exposes (one instance per input partition).

    Attributes:
        stage: ``"account"`` or ``"catalog"``.
        entity_types: entity types it holds state for (metric labels).
        detector_names: detector names its alerts may carry (metric labels).
    """

    stage: str
    entity_types: tuple[str, ...]
    detector_names: tuple[str, ...]

    def process(self, batch: PlayBatch) -> list[Alert]:
        """Score then learn one micro-batch (event-time order not required);
        return the alerts it raises. Alert ids are deterministic, so
        re-processing the same records yields identical alerts."""
        ...

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able, see :mod:`detectors.serialize`)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore a snapshot from :meth:`state_dict`."""
        ...

    def entity_counts(self) -> dict[str, int]:
        """Active entities held, per entity type."""
        ...
