"""Bootstrap intervals of per-user hit rates, and of paired differences between scorers on the same users.

Every scorer of a comparison is evaluated on the same users, so the resamples are shared: the
interval of a difference is that of the paired difference (much narrower than two separate
intervals would suggest when the scorers agree on most users).
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def _draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` user indices drawn with replacement (seeded, shared by every scorer)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(values: np.ndarray, draws: np.ndarray) -> tuple[float, float]:
    means = values[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def mean_intervals(
    values: dict[str, np.ndarray], resamples: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap interval of the mean of each 0/1 (or real) array in ``values``.
    Arrays of one length share their resamples, so those of the same rows stay paired."""
    out: dict[str, tuple[float, float]] = {}
    draws: dict[int, np.ndarray] = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=float)
        if len(v) == 0:
            continue
        if len(v) not in draws:
            draws[len(v)] = _draws(len(v), resamples, seed)
        out[name] = _interval(v, draws[len(v)])
    return out


def hit_intervals(
    hits: dict[str, np.ndarray],
    main: str,
    compare: tuple[str, ...],
    prefix: str = "test/",
    metric: str = "hit@1",
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """95% percentile-bootstrap intervals over users.

    ``hits[name]`` are 0/1 per user, aligned across names. Returns, for every name,
    ``<prefix><name>/<metric>_ci95_low|high`` (``main`` without its name) and, for each name in
    ``compare``, the paired difference ``main - name``: ``<prefix>diff/<name>/<metric>`` with its
    ``_ci95_low|high``.
    """
    n = len(hits[main])
    if any(len(v) != n for v in hits.values()):
        raise ValueError(
            f"hit_intervals needs the same users for every scorer, got { ({k: len(v) for k, v in hits.items()}) }"
        )
    if n == 0:
        return {}
    base = np.asarray(hits[main], dtype=float)
    diffs = {name: base - np.asarray(hits[name], dtype=float) for name in compare}
    intervals = mean_intervals({**hits, **{f"diff/{name}": d for name, d in diffs.items()}}, resamples, seed)
    out: dict[str, float] = {}
    for name in hits:
        key = f"{prefix}{'' if name == main else name + '/'}{metric}"
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = intervals[name]
    for name, diff in diffs.items():
        key = f"{prefix}diff/{name}/{metric}"
        out[key] = float(diff.mean())
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = intervals[f"diff/{name}"]
    return out
