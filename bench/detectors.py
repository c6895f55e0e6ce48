"""Benchmark of the detectors library (not a test): prints a table of throughput and memory.

For each detector: events/s of ``score_many`` then ``learn_many`` per micro-batch on
``--events`` events x 16 features (univariate detectors use the first column), on one core,
next to river's ``HalfSpaceTrees`` and ``LODA`` per-event ``score_one``/``learn_one`` loop in
the same run. River's loop runs on a subsample (``--river-events``, default 10k) and its
rate is extrapolated (the per-event cost of those models is constant). MIDAS, MIDAS-R and
MIDAS-F are timed on ``--edges`` edges.

Comparators ("vs river"): HST and LODA against river's own HST and LODA; the ensemble
(HST + LODA + OnlineGaussian) against river's loop of the members river has, HalfSpaceTrees
and LODA on each event (river's ``GaussianScorer`` is univariate, on a regression target: no
counterpart of the 16-d Gaussian, so that loop does less work than our ensemble); the
sliding-window isolation forest against river HST (river has no isolation forest; HST is its
forest-family detector); the other detectors against the faster of river's HST and LODA.

SlidingWindowIForest refits every ``refit_every`` events (200k by default), which a 100k
stream would never reach in steady state: it learns ``refit_every`` events untimed (warm-up
fit and first full fit), then is timed on the next ``refit_every`` events, which include
exactly one refit (the steady-state cost of one fit per ``refit_every`` events); the row
says how many fits fell in the timed part. Its memory is measured at that point too.

Memory: "heap" is what one instance holds after learning the stream (tracemalloc, Python
objects and numpy arrays); "state" is the size of its snapshot (``detectors.serialize.dumps``);
"per entity" is what one more entity costs: 0 for the shared detectors and the MIDAS
sketches (constant memory), the whole heap for a detector kept per entity (e.g. one
RobustZScore per track's plays-per-minute series).

Timings are the best of ``--repeats`` runs (default 3), for ours and river's alike.

Usage: ``.venv/bin/python bench/detectors.py [--events 100000] [--batch 1000] [--edges 1000000] [--refit-every 200000]``
Targets (issue 10): every detector >= 100k events/s in batch mode, >= 10x river's per-event
loop, MIDAS-R and MIDAS-F >= 1M edges/s.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import (  # noqa: E402
    LODA,
    MIDAS,
    MIDASF,
    MIDASR,
    DenStream,
    HalfSpaceTrees,
    OnlineGaussian,
    QuantileCalibrator,
    RobustZScore,
    ScoreEnsemble,
    SlidingWindowIForest,
)
from detectors.serialize import dumps  # noqa: E402


def _stream(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[rng.random(n) < 0.01] += 5.0
    return X


class _Clock:
    """CPU time of this process (robust on a shared machine) and wall time."""

    def __enter__(self):
        self.c0, self.w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.c0
        self.wall = time.perf_counter() - self.w0


def _time_detector(make, X: np.ndarray, batch: int, repeats: int) -> tuple[float, float, int]:
    """Best of ``repeats`` runs (events per CPU second, per wall second) and the snapshot size."""
    warm = make()  # compile the numba kernels outside the timing
    warm.learn_many(X[: min(len(X), 3000)])
    warm.score_many(X[:batch])
    best_cpu = best_wall = 0.0
    for _ in range(repeats):
        det = make()
        with _Clock() as c:
            for s in range(0, X.shape[0], batch):
                det.score_many(X[s:s + batch])
                det.learn_many(X[s:s + batch])
        best_cpu, best_wall = max(best_cpu, X.shape[0] / c.cpu), max(best_wall, X.shape[0] / c.wall)
    return best_cpu, best_wall, len(dumps(det.state_dict()))


def _time_steady(make, X: np.ndarray, pre: int, batch: int, repeats: int) -> tuple[float, float, int, int]:
    """Like _time_detector, but learn X[:pre] untimed first and time X[pre:] only.

    Returns events per CPU second, per wall second, snapshot size and the number of forest
    fits in the timed part (SlidingWindowIForest's ``n_fits_``).
    """
    warm = make()
    warm.learn_many(X[: min(len(X), 3000)])
    warm.score_many(X[:batch])
    best_cpu = best_wall = 0.0
    n = X.shape[0] - pre
    for _ in range(repeats):
        det = make()
        for s in range(0, pre, batch):
            det.learn_many(X[s:min(pre, s + batch)])
        fits0 = det.n_fits_
        with _Clock() as c:
            for s in range(pre, X.shape[0], batch):
                det.score_many(X[s:s + batch])
                det.learn_many(X[s:s + batch])
        best_cpu, best_wall = max(best_cpu, n / c.cpu), max(best_wall, n / c.wall)
    return best_cpu, best_wall, len(dumps(det.state_dict())), det.n_fits_ - fits0


def _heap(make, X: np.ndarray, batch: int) -> int:
    """Bytes held (tracemalloc) by one instance after learning X in batches."""
    tracemalloc.start()
    det = make()
    for s in range(0, X.shape[0], batch):
        det.learn_many(X[s:s + batch])
    cur, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del det
    return cur


def _size(n: float) -> str:
    """Bytes as KiB, or MiB from 10 MiB on (fits the 11-character table cells)."""
    return f"{n / 1024:>7,.1f} KiB" if n < 10 * 2 ** 20 else f"{n / 2 ** 20:>7,.1f} MiB"


def _dict_rows(X: np.ndarray) -> list[dict]:
    names = [f"x{j}" for j in range(X.shape[1])]
    return [dict(zip(names, r)) for r in X.tolist()]


def _time_river(make, X: np.ndarray, repeats: int) -> float:
    """Best of ``repeats`` runs of river's per-event score_one/learn_one loop, events per CPU second."""
    rows = _dict_rows(X)
    best = 0.0
    for _ in range(repeats):
        model = make()
        with _Clock() as c:
            for x in rows:
                model.score_one(x)
                model.learn_one(x)
        best = max(best, len(rows) / c.cpu)
    return best


def _time_river_pair(make_hst, make_loda, Xr: np.ndarray, X: np.ndarray, repeats: int) -> float:
    """River's per-event loop of HST (on [0, 1]-scaled rows Xr) and LODA (on rows X), events per CPU second."""
    rows_r, rows = _dict_rows(Xr), _dict_rows(X)
    best = 0.0
    for _ in range(repeats):
        hst, loda = make_hst(), make_loda()
        with _Clock() as c:
            for xr, x in zip(rows_r, rows):
                hst.score_one(xr)
                loda.score_one(x)
                hst.learn_one(xr)
                loda.learn_one(x)
        best = max(best, len(rows) / c.cpu)
    return best


def _edges(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 100_000, n)          # accounts
    dst = rng.integers(0, 50_000, n)           # tracks
    t = np.sort(rng.integers(1, 1441, n))      # one day of minute ticks
    return src.astype(np.int64), dst.astype(np.int64), t.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--river-events", type=int, default=10_000)
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs (the machine may be shared)")
    ap.add_argument("--refit-every", type=int, default=SlidingWindowIForest().refit_every,
                    help="SlidingWindowIForest's window_size = refit_every for its steady-state row")
    a = ap.parse_args()

    X = _stream(a.events, a.features)
    Xr = (X - X.min(0)) / (X.max(0) - X.min(0))  # river's HST expects [0, 1] features

    from river import anomaly

    river_hst = _time_river(lambda: anomaly.HalfSpaceTrees(seed=0), Xr[: a.river_events], a.repeats)
    river_loda = _time_river(lambda: anomaly.LODA(seed=0), X[: a.river_events], a.repeats)
    best_river = max(river_hst, river_loda)
    faster = "river HST" if river_hst >= river_loda else "river LODA"
    river_pair = _time_river_pair(lambda: anomaly.HalfSpaceTrees(seed=0), lambda: anomaly.LODA(seed=0),
                                  Xr[: a.river_events], X[: a.river_events], a.repeats)

    def ens():
        e = ScoreEnsemble()
        # calibrators filled with some scores so the combination does real work
        for n in e.names:
            e.calibrators[n].learn_many(np.random.default_rng(1).random(5000))
        return e

    rows = [
        ("HalfSpaceTrees", lambda: HalfSpaceTrees(seed=0), X, river_hst, "river HST"),
        ("HalfSpaceTrees, river's params", lambda: HalfSpaceTrees(n_trees=10, height=8, seed=0), X, river_hst,
         "river HST"),
        ("LODA", lambda: LODA(seed=0), X, river_loda, "river LODA"),
        ("LODA, river's params", lambda: LODA(n_bins=10, seed=0), X, river_loda, "river LODA"),
        ("OnlineGaussian", lambda: OnlineGaussian(), X, best_river, faster),
        ("DenStream", lambda: DenStream(), X, best_river, faster),
        ("SlidingWindowIForest", None, None, river_hst, "river HST"),
        ("RobustZScore (d=1)", lambda: RobustZScore(), X[:, :1], best_river, faster),
        ("RobustZScore period=1440 (d=1)", lambda: RobustZScore(period=1440), X[:, :1], best_river, faster),
        ("ScoreEnsemble(HST+LODA+Gauss)", ens, X, river_pair, "river HST+LODA"),
    ]
    R = a.refit_every
    XL = _stream(2 * R, a.features)  # its first rows are X
    make_if = lambda: SlidingWindowIForest(window_size=R, refit_every=R, seed=0)  # noqa: E731
    per_entity = {"RobustZScore (d=1)", "RobustZScore period=1440 (d=1)"}

    print(f"# detectors benchmark: {a.events:,} events x {a.features} features, micro-batches of {a.batch}, "
          f"one core (numpy/numba single-threaded)")
    print("# events/s per CPU second of this process (robust when the machine is shared) and per wall second")
    print(f"# best of {a.repeats} runs; river's defaults: HST 10 trees of height 8, LODA 100 cuts x 10 bins; ours: "
          "HST 25 trees of height 10, LODA 100 projections x 20 bins")
    print(f"# river per-event loop measured on {a.river_events:,} events and extrapolated (CPU): "
          f"HalfSpaceTrees {river_hst:,.0f} ev/s, LODA {river_loda:,.0f} ev/s, "
          f"HalfSpaceTrees + LODA on each event {river_pair:,.0f} ev/s")
    print("# vs river: HST/LODA rows against river's HST/LODA; ScoreEnsemble against river's HST + LODA loop "
          "(river has no multivariate Gaussian scorer);")
    print("#   SlidingWindowIForest against river HST (river has no isolation forest; HST is its forest-family "
          f"detector); the others against the faster of river's two ({faster})")
    print(f"# SlidingWindowIForest (window_size = refit_every = {R:,}): steady state, timed on events {R:,} to "
          f"{2 * R:,} after {R:,} untimed (warm-up fit + first full fit); its heap/state are at that point")
    print()
    print(f"| {'detector':32} | {'events/s CPU':>12} | {'events/s wall':>13} | {'vs river (CPU)':>24} "
          f"| {'heap':>11} | {'state':>11} | {'per entity':>10} |")
    print(f"|{'-' * 34}|{'-' * 13}:|{'-' * 14}:|{'-' * 25}:|{'-' * 12}:|{'-' * 12}:|{'-' * 11}:|")
    notes = []
    for name, make, data, ref, refname in rows:
        if make is None:  # SlidingWindowIForest: steady state over one refit period
            rate, wall, size, fits = _time_steady(make_if, XL, R, a.batch, a.repeats)
            heap = _heap(make_if, XL, a.batch)
            notes.append(f"# SlidingWindowIForest: {fits} forest fit(s) in the timed {R:,} events (one per "
                         f"refit_every); 100 trees x max_samples 256, scikit-learn engine")
        else:
            rate, wall, size = _time_detector(make, data, a.batch, a.repeats)
            heap = _heap(make, data, a.batch)
        ent = _size(heap).strip() if name in per_entity else "0"
        print(f"| {name:32} | {rate:>12,.0f} | {wall:>13,.0f} | {rate / ref:>8.1f}x {refname:>14} "
              f"| {_size(heap)} | {_size(size)} | {ent:>10} |")

    cal = QuantileCalibrator()
    sc = np.random.default_rng(0).standard_exponential(a.events)
    cal.learn_many(sc[:1000])
    cal.tail_probability(sc[:10])
    cal = QuantileCalibrator()
    with _Clock() as c:
        cal.learn_many(sc)
        cal.tail_probability(sc)
    print(f"| {'QuantileCalibrator (learn+query)':32} | {a.events / c.cpu:>12,.0f} | {a.events / c.wall:>13,.0f} "
          f"| {'':>24} | {'':>11} | {len(dumps(cal.state_dict())) / 1024:>7,.1f} KiB | {'0':>10} |")
    for line in notes:
        print(line)

    print()
    src, dst, t = _edges(a.edges)
    print(f"# {a.edges:,} edges: 100k accounts -> 50k tracks over 1,440 minute ticks")
    print(f"| {'edge detector':36} | {'edges/s CPU':>12} | {'edges/s wall':>12} | {'state':>11} | per edge/entity |")
    print(f"|{'-' * 38}|{'-' * 13}:|{'-' * 13}:|{'-' * 12}:|{'-' * 17}:|")
    for cls in (MIDAS, MIDASR, MIDASF):
        cls().score_edges(src[:100], dst[:100], t[:100])  # compile
        for label, step in (("one call", a.edges), ("calls of 10k edges", 10_000)):
            det = cls()
            with _Clock() as c:
                for s in range(0, a.edges, step):
                    det.score_edges(src[s:s + step], dst[s:s + step], t[s:s + step])
            size = len(dumps(det.state_dict()))
            print(f"| {cls.__name__ + ' 2x1024, ' + label:36} | {a.edges / c.cpu:>12,.0f} | "
                  f"{a.edges / c.wall:>12,.0f} | {size / 1024:>7,.1f} KiB | {'0':>15} |")

if __name__ == "__main__":
    main()
