"""Ranking metrics for the sampled (1 + 19 candidates) and full-ranking protocols.

Every metric is a torchmetrics ``Metric`` with ``"sum"`` states, so under DDP the ranks' sums are
added and the result is exact, provided each user is evaluated on exactly one rank (the
datamodule's ``ShardedEvalSampler`` guarantees that).

Ties count against the target: its rank is the number of other items scoring *at least* as high.
A model that scores everything equally therefore gets Hit@1 = 0, not a lucky 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID


def sampled_ranks(scores: Tensor) -> Tensor:
    """0-based rank of column 0 among ``scores [B, C]`` (ties against it) -> ``[B]``."""
    return (scores[:, 1:] >= scores[:, :1]).sum(dim=1)


def full_ranks(scores: Tensor, targets: Tensor, history: Tensor) -> Tensor:
    """0-based rank of ``targets [B]`` among all items ``scores [B, N+1]``.

    The padding column and the user's earlier items ``history [B, H]`` (right-padded) are excluded,
    except the target itself should it appear there (a repeat purchase).
    """
    scores = scores.float().clone()
    target_scores = scores.gather(1, targets.unsqueeze(1))
    scores[:, PAD_ID] = float("-inf")
    if history.numel():
        scores.scatter_(1, history, float("-inf"))
    scores.scatter_(1, targets.unsqueeze(1), target_scores)
    return (scores >= target_scores).sum(dim=1) - 1


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


class RankingMetricsCallback(L.Callback):
    """Updates ranking metrics from evaluation step outputs and logs them at epoch end.

    Step outputs: ``{"scores": [B, C]}`` (sampled protocol, positive in column 0) and, optionally,
    ``{"full_scores": [B, N+1]}`` (full ranking; targets and history are read from the batch).
    Full ranking is computed when the module's ``full_ranking_val`` / ``full_ranking_test``
    attribute is true (default: test only). Logged keys: ``val/hit@1``, ``val/ndcg@10``, ``test/mrr``, ``test/full/ndcg@10`` ...

    Modules that compare several scorers on the same candidates declare ``val_ranking_sets`` /
    ``test_ranking_sets`` (names) and ``val_rate_names`` / ``test_rate_names``; their steps then also return ``{"scores/<name>": [B, C]}`` (with an optional
    row filter ``{"mask/<name>": bool [B]}``) and ``{"rate/<name>": 0/1 [B]}``, logged as
    ``test/<name>/hit@1`` ... and ``test/<name>``.
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10), full_ks: Sequence[int] = (5, 10, 20)) -> None:
        self.ks, self.full_ks = tuple(ks), tuple(full_ks)
        self.metrics: dict[str, MetricCollection] = {}
        self.rates: dict[str, Rate] = {}

    def _start(self, split: str, pl_module: L.LightningModule, full: bool) -> None:
        # Created on every rank at epoch start, even one without batches, so that the collective
        # sum in compute() is entered by all ranks.
        self.metrics = {split: sampled_metrics(self.ks).to(pl_module.device)}
        if full:
            self.metrics[f"{split}/full"] = full_metrics(self.full_ks).to(pl_module.device)
        for name in getattr(pl_module, f"{split}_ranking_sets", ()):
            self.metrics[f"{split}/{name}"] = sampled_metrics(self.ks).to(pl_module.device)
        rates = getattr(pl_module, f"{split}_rate_names", ())
        self.rates = {f"{split}/{name}": Rate().to(pl_module.device) for name in rates}

    def _update(self, split: str, pl_module: L.LightningModule, outputs: Any, batch: SeqBatch) -> None:
        if not isinstance(outputs, dict):
            return
        if "scores" in outputs:
            self.metrics[split].update(sampled_ranks(outputs["scores"]))
        if "full_scores" in outputs:
            ranks = full_ranks(outputs["full_scores"], batch.candidates[:, 0], batch.history)
            self.metrics[f"{split}/full"].update(ranks)
        for key, value in outputs.items():
            kind, _, name = key.partition("/")
            if kind == "scores" and name:
                mask = outputs.get(f"mask/{name}")
                ranks = sampled_ranks(value)
                self.metrics[f"{split}/{name}"].update(ranks if mask is None else ranks[mask])
            elif kind == "rate":
                self.rates[f"{split}/{name}"].update(value)

    def _log(self, split: str, pl_module: L.LightningModule) -> None:
        for name in list(self.metrics):
            collection = self.metrics.pop(name)
            # compute() sums the states over ranks; the values are identical everywhere, so no sync_dist.
            for key, value in collection.compute().items():
                pl_module.log(f"{name}/{key}", value.float(), prog_bar=key in ("hit@10", "ndcg@10") and split == "val")
            collection.reset()
        for name, rate in self.rates.items():
            pl_module.log(name, rate.compute().float())
        self.rates = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val", pl_module, full=getattr(pl_module, "full_ranking_val", False))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("val", pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("val", pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test", pl_module, full=getattr(pl_module, "full_ranking_test", True))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("test", pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("test", pl_module)
