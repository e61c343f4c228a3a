"""Bootstrap intervals of per-user hit rates, and of paired differences between scorers on the same users.

Every scorer of a comparison is evaluated on the same users, so the resamples are shared: the
interval of a difference is that of the paired difference (much narrower than two separate
intervals would suggest when the scorers agree on most users).
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def mean_intervals(
    values: dict[str, np.ndarray], resamples: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap interval of the mean of each 0/1 (or real) array in ``values``.
    Arrays of one length share their resamples (:func:`bootstrap_means`), so those of the same rows
    stay paired."""
    groups: dict[int, dict[str, np.ndarray]] = {}
    for name, v in values.items():
        if len(v):
            groups.setdefault(len(v), {})[name] = v
    out: dict[str, tuple[float, float]] = {}
    for group in groups.values():
        out.update({name: quantile_interval(means) for name, means in bootstrap_means(group, resamples, seed).items()})
    return {name: out[name] for name in values if name in out}


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
    return paired_figures(hits, main, metric, prefix, resamples, seed, compare=compare, ratios=False)


def bootstrap_means(values: dict[str, np.ndarray], resamples: int = 2000, seed: int = 0, chunk: int = 100) -> dict[str, np.ndarray]:
    """``[resamples]`` bootstrap means of each array in ``values`` (all over the same ``n`` rows), from
    shared draws, so that differences and ratios of two arrays' means stay paired. The draws are made
    ``chunk`` resamples at a time: for 22,363 users a full ``[2000, n]`` index array would be 358 MB."""
    arrays = {name: np.asarray(v, dtype=float) for name, v in values.items()}
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"bootstrap_means needs non-empty arrays of one length, got { ({k: len(v) for k, v in arrays.items()}) }")
    n = lengths.pop()
    rng = np.random.default_rng(seed)
    means = {name: np.empty(resamples) for name in arrays}
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for name, v in arrays.items():
            means[name][start : start + len(draws)] = v[draws].mean(axis=1)
    return means


def quantile_interval(samples: np.ndarray) -> tuple[float, float]:
    """The central 95% of ``samples`` (percentile bootstrap)."""
    low, high = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def paired_figures(values: dict[str, np.ndarray], main: str, metric: str, prefix: str = "test/", resamples: int = 2000,
                   seed: int = 0, compare: tuple[str, ...] | None = None, ratios: bool = True) -> dict[str, float]:
    """Intervals of per-row values (0/1 hits, a per-user NDCG) of several scorers on the same rows,
    from shared resamples (:func:`bootstrap_means`): ``<prefix>[<name>/]<metric>_ci95_low|high`` for
    every name (``main`` without its name) and, for each name in ``compare`` (default: every other
    one), ``<prefix>diff/<name>/<metric>`` (mean of ``main`` - mean of ``name``) and, with
    ``ratios``, ``<prefix>ratio/<name>/<metric>`` (their quotient, left out when ``name``'s mean
    can be 0), each with its interval."""
    means = bootstrap_means(values, resamples, seed)
    base = float(np.mean(values[main]))
    compare = tuple(name for name in values if name != main) if compare is None else compare
    out: dict[str, float] = {}
    for name, samples in means.items():
        key = f"{prefix}{'' if name == main else name + '/'}{metric}"
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = quantile_interval(samples)
        if name not in compare:
            continue
        other = float(np.mean(values[name]))
        key = f"{prefix}diff/{name}/{metric}"
        out[key] = base - other
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = quantile_interval(means[main] - samples)
        if ratios and other > 0 and (samples > 0).all():
            key = f"{prefix}ratio/{name}/{metric}"
            out[key] = base / other
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = quantile_interval(means[main] / samples)
    return out
