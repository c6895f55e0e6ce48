"""Delivery profiles: the loudness target and true-peak ceiling a file is
checked against (``loudness_out_of_range``, ``true_peak_over``).

These are compliance findings about the level, not damage to the file.

| profile | target | tolerance | max true peak | source |
|---|---|---|---|---|
| ``streaming`` | -14 LUFS | +-1 LU | -1 dBTP | common music-streaming normalisation level |
| ``ebu_r128`` | -23 LUFS | +-0.5 LU | -1 dBTP | EBU R128 (2020) |
| ``aes_td1008`` | -18 LUFS | +-2 LU (-20..-16) | -1 dBTP | AES TD1008 (2021), distribution of music/speech |

Source: EBU R128 v5 (2020); AES TD1008.1.21-9 "Recommendations for loudness of
internet audio streaming and on-demand distribution".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeliveryProfile:
    """A delivery target: integrated loudness ``target_lufs`` +-
    ``tolerance_lu`` and a true-peak ceiling ``max_true_peak_dbtp``."""

    name: str
    target_lufs: float
    tolerance_lu: float
    max_true_peak_dbtp: float


PROFILES: dict[str, DeliveryProfile] = {
    "streaming": DeliveryProfile("streaming", -14.0, 1.0, -1.0),
    "ebu_r128": DeliveryProfile("ebu_r128", -23.0, 0.5, -1.0),
    "aes_td1008": DeliveryProfile("aes_td1008", -18.0, 2.0, -1.0),
}


def get_profile(name: str) -> DeliveryProfile:
    """Profile by name.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown delivery profile {name!r}; known: {', '.join(PROFILES)}") from None
