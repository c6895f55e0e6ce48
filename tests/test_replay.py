"""Replay planning: one common window, whole-day shifts, pieces, passes."""

from __future__ import annotations

import numpy as np
import pytest

from stream.batch import PlayBatch
from stream.replay import encode_rows, plan_replay
from stream.schemas import PlayEvent

DAY = 86400.0


def hist(account, start, days, per_day=3):
    rows = []
    for d in range(days):
        for k in range(per_day):
            ts = start + d * DAY + 3600 * (8 + 4 * k) + 17
            rows.append(dict(event_id=f"{account}-{d}-{k}", ts=ts, account_id=account, track_id="t",
                             artist_id="x", ms_played=1000 + k))
    return rows


def test_newest_piece_shifted_by_whole_days_into_the_past():
    start = 1_800_000_000.0
    rows = hist("old", 1_400_000_000.0, 500) + hist("new", 1_700_000_000.0, 30)
    b = PlayBatch.from_dicts(rows)
    p = plan_replay(b, start, window_days=365)
    assert (p.ts < start).all() and (p.ts >= start - 366 * DAY).all()
    assert np.all(np.diff(p.ts) >= 0)  # event-time order
    for acc in ("old", "new"):
        orig = np.sort(b.ts[np.array(b.account_id) == acc])
        got = np.sort(p.ts[np.array(p.account_id) == acc])
        orig = orig[orig > orig.max() - 365 * DAY]  # newest piece only
        assert len(got) == len(orig)
        shifts = got - orig
        assert np.allclose(shifts, shifts[0]) and shifts[0] % DAY == 0  # own timing and hour of day kept
        assert got.max() > start - DAY  # lands in the last day before the start
    assert all(e.endswith(":p1") for e in p.event_id)


def test_all_pieces_and_loop_passes_tile_the_past():
    start = 1_800_000_000.0
    b = PlayBatch.from_dicts(hist("u", 1_600_000_000.0, 50))
    p = plan_replay(b, start, window_days=20, all_pieces=True, loop=2)
    accounts = set(p.account_id)
    assert accounts == {"u#0", "u#1", "u#2"}
    assert len(p) == 2 * len(b) and len(set(p.event_id)) == len(p)
    p1 = p.ts[[e.endswith(":p1") for e in p.event_id]]
    p2 = p.ts[[e.endswith(":p2") for e in p.event_id]]
    assert p2.max() < start and p2.min() >= start - 21 * DAY
    assert p1.max() < start - 20 * DAY and p1.min() >= start - 41 * DAY
    # same event, same pass -> same id, whatever the start
    q = plan_replay(b, start + 5 * DAY, window_days=20, all_pieces=True, loop=2)
    assert sorted(q.event_id) == sorted(p.event_id)
    with pytest.raises(ValueError):
        plan_replay(b, start, window_days=0)


def test_encoded_rows_are_valid_play_events():
    b = PlayBatch.from_dicts(hist("u", 1_600_000_000.0, 2))
    b.country = ["DE"] * len(b)
    b.skipped = np.ones(len(b), np.int8)
    for v in encode_rows(b):
        ev = PlayEvent.model_validate_json(v)
        assert ev.country == "DE" and ev.skipped is True and ev.track_duration_ms is None
