"""Ranking metrics for the sampled (1 + 19 candidates) and full-ranking protocols.

Every metric is a torchmetrics ``Metric`` with ``"sum"`` states, so under DDP the ranks' sums are
added and the result is exact, provided each user is evaluated on exactly one rank (the
datamodule's ``ShardedEvalSampler`` guarantees that).

Ties count against the target: its rank is the number of other items scoring *at least* as high.
A model that scores everything equally therefore gets Hit@1 = 0, not a lucky 1.

Multi-target data (``rlmrec``, the RLMRec/FACE protocol) has several held-out items per user and
no sampled candidates: ``Recall@K`` and ``NDCG@K`` over a full ranking, see
:func:`multi_target_positions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from callbacks.intervals import paired_figures
from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID

PAIRED_K = 10  # the paired full-ranking comparison at test is of per-user NDCG@10


def check_finite(scores: Tensor, what: str) -> None:
    """Refuse NaN and infinite scores: compared with ``>=`` a NaN is never ahead of anything, so a NaN
    target would rank first (a free hit) and NaN others would never outrank it."""
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{what}: {bad} of {scores.numel()} scores are NaN or infinite; the model's outputs diverged or "
            "are undefined (check the training loss and learning rate). Ranking metrics refuse them rather than "
            "counting them as hits or misses"
        )


def sampled_ranks(scores: Tensor) -> Tensor:
    """0-based rank of column 0 among ``scores [B, C]`` (ties against it) -> ``[B]``; non-finite scores raise."""
    check_finite(scores, "sampled ranking")
    return (scores[:, 1:] >= scores[:, :1]).sum(dim=1)


def full_ranks(scores: Tensor, targets: Tensor, history: Tensor) -> Tensor:
    """0-based rank of ``targets [B]`` among all items ``scores [B, N+1]``.

    The padding column and the user's earlier items ``history [B, H]`` (right-padded) are excluded,
    except the target itself should it appear there (a repeat purchase). Non-finite scores raise.
    """
    check_finite(scores, "full ranking")
    scores = scores.float().clone()
    target_scores = scores.gather(1, targets.unsqueeze(1))
    scores[:, PAD_ID] = float("-inf")
    if history.numel():
        scores.scatter_(1, history, float("-inf"))
    scores.scatter_(1, targets.unsqueeze(1), target_scores)
    return (scores >= target_scores).sum(dim=1) - 1


def multi_target_positions(scores: Tensor, targets: Tensor, history: Tensor, max_k: int) -> Tensor:
    """0-based positions ``[B, T]`` of a user's held-out items ``targets [B, T]`` in a full ranking.

    ``scores [B, N+1]`` rank all items; the padding column and the training items ``history
    [B, H]`` (both right-padded with ``PAD_ID``) are masked, as RLMRec masks the training matrix.
    A target that is also in ``history`` is masked too and never hit (RLMRec's splits are
    disjoint, so this does not happen there). Ties count against the targets: the ranking is
    the worst order consistent with the scores, where a non-target scoring the same as a
    target comes first, so the ``i``-th best target sits at (non-targets scoring at least as
    high) + ``i``. Without ties these are the positions in ``torch.topk``'s order, which is
    what RLMRec uses. Positions ``>= max_k``, and the padding of ``targets``, read ``max_k``.
    Non-finite scores raise.
    """
    if targets.dim() != 2 or scores.dim() != 2 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"scores must be [B, N+1] and targets [B, T], got shapes {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    check_finite(scores, "multi-target full ranking")
    masked = scores.float().clone()
    masked[:, PAD_ID] = float("-inf")
    if history.numel():
        masked.scatter_(1, history, float("-inf"))
    valid = targets != PAD_ID
    target_scores = masked.gather(1, targets).masked_fill(~valid, float("-inf"))
    others = masked.scatter(1, targets, float("-inf"))  # non-targets only
    top = others.topk(min(max_k, others.shape[1]), dim=1).values  # [B, k]
    # Non-targets scoring >= each target; exact below max_k, which is all that matters.
    ahead = (top.unsqueeze(1) >= target_scores.unsqueeze(2)).sum(-1)
    target_scores, order = target_scores.sort(dim=1, descending=True)
    positions = ahead.gather(1, order) + torch.arange(targets.shape[1], device=targets.device)
    # Masked targets are never hits, even where -inf scores fill the top.
    rankable = target_scores > float("-inf")
    return positions.masked_fill(~rankable, max_k).clamp(max=max_k)


class _RankMetric(Metric):
    """Accumulates an integer histogram of ranks; the value is computed from it once, at the end.

    Integer counts make the result independent of batch order and of how users are split over
    ranks: 2-process DDP gives bit-for-bit the number of 1 process. Ranks at or beyond
    ``num_buckets - 1`` share the last bucket, whose weight is 0 for Hit@k and NDCG@k.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_buckets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_buckets = num_buckets
        self.add_state("rank_counts", default=torch.zeros(num_buckets, dtype=torch.long), dist_reduce_fx="sum")

    def weights(self) -> Tensor:
        """Value of each rank bucket ``[num_buckets]`` (float64)."""
        raise NotImplementedError

    def update(self, ranks: Tensor) -> None:
        buckets = ranks.long().clamp(max=self.num_buckets - 1)
        self.rank_counts += torch.bincount(buckets, minlength=self.num_buckets)

    def compute(self) -> Tensor:
        counts = self.rank_counts.double()
        if counts.sum() == 0:  # no user in this (sub)set: undefined, not 0 (metrics.json writes null)
            return torch.tensor(float("nan"), dtype=torch.float64, device=counts.device)
        return (counts @ self.weights().to(counts.device)) / counts.sum()


class HitRate(_RankMetric):
    """Share of users whose target ranks in the top ``k``."""

    def __init__(self, k: int, **kwargs: Any) -> None:
        super().__init__(num_buckets=k + 1, **kwargs)
        self.k = k

    def weights(self) -> Tensor:
        w = torch.ones(self.num_buckets, dtype=torch.float64)
        w[-1] = 0.0
        return w


class NDCG(_RankMetric):
    """NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top k, else 0."""

    def __init__(self, k: int, **kwargs: Any) -> None:
        super().__init__(num_buckets=k + 1, **kwargs)
        self.k = k

    def weights(self) -> Tensor:
        w = 1.0 / torch.log2(torch.arange(self.num_buckets, dtype=torch.float64) + 2.0)
        w[-1] = 0.0
        return w


class MRR(_RankMetric):
    """Mean reciprocal rank ``1 / (rank + 1)``, exact for ranks below ``max_rank`` (a list's length)."""

    def __init__(self, max_rank: int = 1000, **kwargs: Any) -> None:
        super().__init__(num_buckets=max_rank + 1, **kwargs)

    def weights(self) -> Tensor:
        w = 1.0 / (torch.arange(self.num_buckets, dtype=torch.float64) + 1.0)
        w[-1] = 0.0
        return w


class _UserMeanMetric(Metric):
    """Mean over users of a per-user value computed from ``multi_target_positions``.

    States: ``total``, a float64 *sum* of the per-user values, and ``count`` (users). Unlike the
    integer rank histograms above, a sum of floats depends (in its last bits, about 1e-16
    relative) on the order of addition, so a DDP result may differ from one process by
    rounding; the logged float32 value is practically always the same.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def values(self, positions: Tensor, num_targets: Tensor) -> Tensor:
        """Per-user values ``[B]`` (float64) of users with at least one target."""
        raise NotImplementedError

    def update(self, positions: Tensor, num_targets: Tensor) -> None:
        """``positions [B, T]`` from :func:`multi_target_positions`, ``num_targets [B]`` (|T| per user)."""
        keep = num_targets > 0
        # All rows at once (no host sync on a GPU); a row without targets has only padding positions.
        values = self.values(positions, num_targets.clamp(min=1))
        self.total += torch.where(keep, values, 0.0).sum()
        self.count += keep.sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.count


class MultiTargetRecall(_UserMeanMetric):
    """Recall@k = (held-out items in the top k) / |held-out items|; the denominator is |T|, not min(k, |T|)."""

    def values(self, positions: Tensor, num_targets: Tensor) -> Tensor:
        hits = (positions < self.k).sum(1)
        return hits.double() / num_targets.double()


class MultiTargetNDCG(_UserMeanMetric):
    """NDCG@k with binary relevance: DCG = sum of ``1 / log2(p + 2)`` over hits at 0-based positions
    ``p < k``, IDCG = the same with min(k, |T|) hits at the top."""

    def values(self, positions: Tensor, num_targets: Tensor) -> Tensor:
        discount = 1.0 / torch.log2(torch.arange(self.k + 1, dtype=torch.float64, device=positions.device) + 2.0)
        discount[-1] = 0.0  # positions >= k
        dcg = discount[positions.clamp(max=self.k)].sum(1)
        ideal = torch.cumsum(discount[:-1], 0)[num_targets.clamp(max=self.k) - 1]
        return dcg / ideal


class Rate(Metric):
    """Share of users for whom a 0/1 outcome holds (e.g. a generated answer names the target)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outcomes: Tensor) -> None:
        self.hits += outcomes.long().sum()
        self.total += outcomes.numel()

    def compute(self) -> Tensor:
        if self.total == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.hits.double() / self.total


def sampled_metrics(ks: Sequence[int] = (1, 5, 10)) -> MetricCollection:
    metrics: dict[str, Metric] = {}
    for k in ks:
        metrics[f"hit@{k}"] = HitRate(k)
    for k in ks:
        if k > 1:
            metrics[f"ndcg@{k}"] = NDCG(k)
    metrics["mrr"] = MRR()
    return MetricCollection(metrics)


def full_metrics(ks: Sequence[int] = (5, 10, 20)) -> MetricCollection:
    metrics: dict[str, Metric] = {}
    for k in ks:
        metrics[f"hit@{k}"] = HitRate(k)
        metrics[f"ndcg@{k}"] = NDCG(k)
    return MetricCollection(metrics)


def multi_target_metrics(ks: Sequence[int] = (5, 10, 20)) -> MetricCollection:
    """``recall@k`` and ``ndcg@k``; update with ``(positions [B, T], num_targets [B])``."""
    metrics: dict[str, Metric] = {}
    for k in ks:
        metrics[f"recall@{k}"] = MultiTargetRecall(k)
        metrics[f"ndcg@{k}"] = MultiTargetNDCG(k)
    # No compute groups: torchmetrics would merge metrics whose states happen to be equal after
    # the first batch (recall@5 and recall@10 of an untrained model are both 0) and then update
    # only one of them. (The rank histograms above may share: equal histograms stay equal.)
    return MetricCollection(metrics, compute_groups=False)


class RankingMetricsCallback(L.Callback):
    """Updates ranking metrics from evaluation step outputs and logs them at epoch end.

    Step outputs: ``{"scores": [B, C]}`` (sampled protocol, positive in column 0) and, optionally,
    ``{"full_scores": [B, N+1]}`` (full ranking; targets and history are read from the batch).
    Full ranking is computed when the module's ``full_ranking_val`` / ``full_ranking_test``
    attribute is true (default: test only). Logged keys: ``val/hit@1``, ``val/ndcg@10``, ``test/mrr``, ``test/full/ndcg@10`` ...

    Multi-target data (the datamodule's ``multi_target``, i.e. ``rlmrec``) has no sampled
    candidates: no sampled metrics are logged, and full ranking logs ``test/full/recall@20``,
    ``test/full/ndcg@20`` ... over every item of the split (batch ``targets``). The choice is made
    from the datamodule at epoch start, so every DDP rank builds the same metrics.

    Modules that compare several scorers on the same candidates declare ``val_ranking_sets`` /
    ``test_ranking_sets`` (names) and ``val_rate_names`` / ``test_rate_names``; their steps then also return ``{"scores/<name>": [B, C]}`` (with an optional
    row filter ``{"mask/<name>": bool [B]}``) and ``{"rate/<name>": 0/1 [B]}``, logged as
    ``test/<name>/hit@1`` ... and ``test/<name>``. Names also listed in ``val_full_ranking_sets`` /
    ``test_full_ranking_sets`` may return ``{"full_scores/<name>": [B, N+1]}``, logged as
    ``test/<name>/full/ndcg@10`` ...

    At test on single-target data, such sets also give paired 95% bootstrap intervals of per-user
    NDCG@10 (:func:`callbacks.intervals.paired_figures`): ``test[/<name>]/full/ndcg@10_ci95_low|high``,
    ``test/diff/<name>/full/ndcg@10`` (main - name) and ``test/ratio/<name>/full/ndcg@10`` (main / name).
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10), full_ks: Sequence[int] = (5, 10, 20)) -> None:
        self.ks, self.full_ks = tuple(ks), tuple(full_ks)
        self.metrics: dict[str, MetricCollection] = {}
        self.rates: dict[str, Rate] = {}
        self.paired: dict[str, list[Tensor]] = {}  # test full-ranking ranks per scorer ("" = the module's own)

    def _start(self, split: str, trainer: L.Trainer, pl_module: L.LightningModule, full: bool) -> None:
        # Created on every rank at epoch start, even one without batches, so that the collective
        # sum in compute() is entered by all ranks.
        datamodule = trainer.datamodule
        multi_target = bool(getattr(datamodule, "multi_target", False))
        self.metrics = {}
        if getattr(datamodule, "has_candidates", True):
            self.metrics[split] = sampled_metrics(self.ks).to(pl_module.device)
        if full:
            collection = multi_target_metrics(self.full_ks) if multi_target else full_metrics(self.full_ks)
            self.metrics[f"{split}/full"] = collection.to(pl_module.device)
        for name in getattr(pl_module, f"{split}_ranking_sets", ()):
            if getattr(datamodule, "has_candidates", True):
                self.metrics[f"{split}/{name}"] = sampled_metrics(self.ks).to(pl_module.device)
            if full and name in getattr(pl_module, f"{split}_full_ranking_sets", ()):
                collection = multi_target_metrics(self.full_ks) if multi_target else full_metrics(self.full_ks)
                self.metrics[f"{split}/{name}/full"] = collection.to(pl_module.device)
        rates = getattr(pl_module, f"{split}_rate_names", ())
        self.rates = {f"{split}/{name}": Rate().to(pl_module.device) for name in rates}
        full_sets = getattr(pl_module, f"{split}_full_ranking_sets", ())
        self.paired = {}
        if split == "test" and full and full_sets and not multi_target:
            self.paired = {"": [], **{name: [] for name in full_sets}}

    def _update(self, split: str, pl_module: L.LightningModule, outputs: Any, batch: SeqBatch) -> None:
        if not isinstance(outputs, dict):
            return
        if "scores" in outputs:
            self.metrics[split].update(sampled_ranks(outputs["scores"]))
        if "full_scores" in outputs:
            self._keep("", self._update_full(self.metrics[f"{split}/full"], outputs["full_scores"], batch))
        for key, value in outputs.items():
            kind, _, name = key.partition("/")
            if kind == "full_scores" and name:
                self._keep(name, self._update_full(self.metrics[f"{split}/{name}/full"], value, batch))
            elif kind == "scores" and name:
                mask = outputs.get(f"mask/{name}")
                ranks = sampled_ranks(value)
                self.metrics[f"{split}/{name}"].update(ranks if mask is None else ranks[mask])
            elif kind == "rate":
                self.rates[f"{split}/{name}"].update(value)

    def _update_full(self, collection: MetricCollection, scores: Tensor, batch: SeqBatch) -> Tensor | None:
        """Updates ``collection``; returns the targets' full ranks (``None`` for multi-target data)."""
        if batch.targets is not None:
            positions = multi_target_positions(scores, batch.targets, batch.history, max(self.full_ks))
            collection.update(positions, (batch.targets != PAD_ID).sum(1))
            return None
        ranks = full_ranks(scores, batch.candidates[:, 0], batch.history)
        collection.update(ranks)
        return ranks

    def _keep(self, name: str, ranks: Tensor | None) -> None:
        if name in self.paired and ranks is not None:
            self.paired[name].append(ranks.detach().cpu())

    def _log_paired(self, pl_module: L.LightningModule) -> None:
        """The paired test comparison of the module's full ranking with each full-ranking set: per-user
        NDCG@10, gathered from every rank, with shared bootstrap resamples (see the class docstring)."""
        ranks = {name: _gather_rows(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long))
                 for name, parts in self.paired.items()}
        self.paired = {}
        if not len(ranks[""]) or any(len(r) != len(ranks[""]) for r in ranks.values()):
            return  # nothing to pair (the scorers must have scored the same users)
        ndcg = {name: np.where(r < PAIRED_K, 1.0 / np.log2(r + 2.0), 0.0) for name, r in ranks.items()}
        figures = paired_figures(ndcg, "", f"full/ndcg@{PAIRED_K}")
        for key, value in figures.items():
            pl_module.log(key, value)

    def _log(self, split: str, pl_module: L.LightningModule) -> None:
        for name in list(self.metrics):
            collection = self.metrics.pop(name)
            # compute() sums the states over ranks; the values are identical everywhere, so no sync_dist.
            for key, value in collection.compute().items():
                pl_module.log(f"{name}/{key}", value.float(), prog_bar=key in ("hit@10", "ndcg@10", "recall@20") and split == "val")
            collection.reset()
        for name, rate in self.rates.items():
            pl_module.log(name, rate.compute().float())
        self.rates = {}
        if self.paired:
            self._log_paired(pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val", trainer, pl_module, full=getattr(pl_module, "full_ranking_val", False))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("val", pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("val", pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test", trainer, pl_module, full=getattr(pl_module, "full_ranking_test", True))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("test", pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("test", pl_module)


def _gather_rows(values: Tensor) -> np.ndarray:
    """``values [n_r]`` of every DDP rank, concatenated in rank order (each rank's own order kept)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values.numpy()
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, values.numpy())
    return np.concatenate(gathered)
