"""A small subsample of bench/audio_eval.py: recall per code on damaged
variants of one real track, false positives on short real tracks."""

from __future__ import annotations

import os

import pytest

from audio_qc.evaluation import KNOWN_DEFECTS, false_positives, recall_on_variants
from stream.config import Settings

AUDIO = Settings().audio_path
_missing = not AUDIO.is_dir()
_reason = f"real audio not found at {AUDIO}"
if _missing and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI=true but {_reason}")

pytestmark = [pytest.mark.realdata, pytest.mark.skipif(_missing, reason=_reason)]

#: Codes asserted below the 0.98 target on this one track (docs/AUDIO_QC.md,
#: "Known shortfalls"): elf-land is quiet, so +12 dB clips under 1 % of its
#: samples, and after the Vorbis encode of the two lossy clipping variants
#: the amplitude pile-up is too small to see (the WAV variants are found).
#: Over all 35 tracks the clipping recall is >= 0.98.
SHORTFALL_FLOOR = {"clipping": 0.5}


def test_recall_per_code_on_damaged_variants(tmp_path):
    track = next(AUDIO.rglob("elf-land.ogg"))
    by_kind: dict[str, list[int]] = {}
    per, misses = recall_on_variants([track], tmp_path, seed=1, excerpt_s=20.0, by_kind=by_kind)
    assert by_kind["clip_lossy"][1] == by_kind["clip_attenuated_lossy"][1] == 1
    assert by_kind["clip_full_scale"] == [1, 1] and by_kind["clicks"] == [1, 1]
    expected_codes = {"truncated", "decode_error", "clipping", "gap", "click", "dc_offset", "polarity_inverted",
                      "dual_mono", "bandwidth_limited", "loudness_out_of_range", "silence", "leading_silence",
                      "trailing_silence", "sample_rate_mismatch", "channel_mismatch", "duration_mismatch"}
    assert set(per) == expected_codes
    for code, (found, total) in per.items():
        assert found / total >= SHORTFALL_FLOOR.get(code, 0.98), (code, misses)


def test_no_false_positives_on_short_real_tracks():
    names = {"elf-land.ogg", "revelation.ogg", "sad.ogg", "Chimes They Fade.ogg", "March Thee to Dis.ogg",
             "silence.ogg"}
    tracks = sorted(p for p in AUDIO.rglob("*") if p.name in names)
    fp, known, flagged = false_positives(tracks)
    assert flagged == []
    assert known["dc_offset"] == (2, 2)  # Chimes They Fade, March Thee to Dis
    assert known["silence"] == (1, 1)
    assert set(KNOWN_DEFECTS) <= set(known)
