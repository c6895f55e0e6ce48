"""Surprise terms: one-sided log-likelihood ratios (nats).

Each feature of an entity is turned into evidence against a benign null with
the scan-statistic log-likelihood ratio (Kulldorff, 1997): how much better an
elevated rate explains the counts than the benign rate does. Terms add up, are
non-negative, and grow with both the size of the deviation and the amount of
data behind it, so a few odd plays do not alert but a sustained pattern does.
"""

from __future__ import annotations

import numpy as np


def binom_llr(k: np.ndarray, n: np.ndarray, p0: float) -> np.ndarray:
    """One-sided binomial LLR (nats) that the share k/n exceeds ``p0``.

    Args:
        k: successes (float array, decayed counts allowed), shape (m,).
        n: trials, same shape, ``n >= k``.
        p0: benign share in (0, 1).

    Returns:
        ``n * KL(k/n || p0)`` where ``k/n > p0``, else 0 (shape (m,)).

    Raises:
        ValueError: if ``p0`` is not in (0, 1).

    >>> round(float(binom_llr(np.array([10.]), np.array([10.]), 0.05)[0]), 2)
    29.96
    """
    if not 0 < p0 < 1:
        raise ValueError(f"p0 must be in (0, 1), got {p0}")
    k = np.asarray(k, np.float64)
    n = np.maximum(np.asarray(n, np.float64), 1e-9)
    p = np.clip(k / n, 1e-12, 1 - 1e-12)
    llr = k * np.log(p / p0) + (n - k) * np.log((1 - p) / (1 - p0))
    return np.where(p > p0, np.maximum(llr, 0.0), 0.0)


def poisson_llr(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """One-sided Poisson LLR (nats) that count ``x`` exceeds mean ``mu``.

    Returns ``x ln(x/mu) - (x - mu)`` where ``x > mu``, else 0.

    >>> round(float(poisson_llr(np.array([20.]), np.array([5.]))[0]), 2)
    12.73
    """
    x = np.asarray(x, np.float64)
    mu = np.maximum(np.asarray(mu, np.float64), 1e-9)
    safe = np.maximum(x, 1e-12)
    llr = safe * np.log(safe / mu) - (x - mu)
    return np.where(x > mu, np.maximum(llr, 0.0), 0.0)
