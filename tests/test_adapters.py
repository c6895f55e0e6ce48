"""Adapters: the real Spotify exports and the Last.fm 1K TSV format."""

from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest

from stream.adapters import (
    DataMissingError, load_lastfm_1k, load_listening, load_spotify_extended, to_events,
)
from stream.batch import UNKNOWN_IDS


def test_spotify_extended_real_export(listening_dir):
    b = load_spotify_extended(listening_dir / "spotify_extended.csv.gz")
    assert len(b) == 128_671 and len(set(b.account_id)) == 7
    assert len(set(b.event_id)) == len(b)  # ids unique
    assert None in b.country and "ZZ" not in b.country  # ZZ -> null
    assert (b.ms_played >= 0).all() and b.ts.min() > 1.3e9
    assert set(np.unique(b.skipped).tolist()) <= {-1, 0, 1} and (b.skipped == -1).any()
    ev = next(to_events(b))
    assert ev.event_id == b.event_id[0] and ev.ms_played == b.ms_played[0]
    again = load_spotify_extended(listening_dir / "spotify_extended.csv.gz")
    assert again.event_id[:1000] == b.event_id[:1000]  # deterministic


def test_listening_subsample_and_unknown_tracks(listening_dir):
    b = load_listening(listening_dir, max_accounts=10, seed=1)
    assert len(set(b.account_id)) == 10
    # basic export: tracks keyed on artist + name; local files keep the unknown ids
    known = b.known_identity()
    assert known.any()
    unknown_tracks = {t for t, k in zip(b.track_id, known) if not k}
    assert unknown_tracks <= UNKNOWN_IDS | {t for t in unknown_tracks if t.startswith("Unknown Artist::")}
    for ev in itertools.islice(to_events(b), 200):
        assert ev.ts.tzinfo is not None


def test_lastfm_1k_fixture(tmp_path):
    rows = [
        "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t\tFuck Me Im Famous",
        "user_000001\t2009-05-04T23:12:57Z\t\tSome Artist\tdb16d0b3-b8ce-4aa8-a11a-e4d53cc7f8a6\tTrack B",
        "user_000001\t2009-05-05T02:00:00Z\t\tSome Artist\t\tTrack C",
        "user_000002\t2009-05-04T10:00:00Z\t\tOther\t\tTrack D",
    ]
    p = tmp_path / "lastfm.tsv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    b = load_lastfm_1k(p)
    assert len(b) == 4
    # first play lasted until the next scrobble 4 min later; the end time is start + length
    assert b.ms_played[0] == 240_000
    assert b.ts[0] == pytest.approx(np.datetime64("2009-05-04T23:12:57").astype("datetime64[s]").astype(int))
    assert b.ms_played[2] == 180_000 and b.ms_played[3] == 180_000  # no next scrobble: 3 min default
    assert b.artist_id[0] == "f1b1cf71-bd35-4e99-8624-24a6e15f133a"  # MusicBrainz id when present
    assert b.track_id[1] == "db16d0b3-b8ce-4aa8-a11a-e4d53cc7f8a6"
    assert b.track_id[2] == "Some Artist::Track C"
    bad = tmp_path / "bad.tsv"
    bad.write_text("only\ttwo\n")
    with pytest.raises(ValueError, match="expected 6"):
        load_lastfm_1k(bad)


def test_missing_data_gives_a_clear_message(tmp_path):
    with pytest.raises(DataMissingError, match="PLAYGUARD_DATA_DIR"):
        load_listening(tmp_path)
