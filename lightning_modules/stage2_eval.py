"""Evaluation helpers of ``align_stage2``: seeded prompt orders, the shuffled control's permutation,
the cold/warm splits, the projector-input statistics and the bootstrap intervals of ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backbones.base import Backbone
from callbacks.intervals import hit_intervals
from datamodules.cache import atomic_write_bytes
from datamodules.datamodule import SeqDataModule


def prompt_orders(users: Tensor, size: int, salt: int) -> Tensor:
    """A seeded permutation of ``size`` candidate columns per user ``[B, size]``: the same for every model."""
    rows = [np.random.default_rng([salt, int(u)]).permutation(size) for u in users.tolist()]
    return torch.as_tensor(np.stack(rows), dtype=torch.long, device=users.device)


def derangements(users: Tensor, size: int, salt: int) -> Tensor:
    """A seeded permutation ``[B, size]`` per user that moves every column (the ``shuffled`` control)."""
    rows = []
    for u in users.tolist():
        cycle = np.random.default_rng([salt, int(u), 1]).permutation(size)
        row = np.empty(size, dtype=np.int64)
        row[cycle] = np.roll(cycle, -1)  # one cycle through all columns: no fixed point
        rows.append(row)
    return torch.as_tensor(np.stack(rows), dtype=torch.long, device=users.device)


def paper_cold_warm(counts: Tensor, share: float) -> tuple[Tensor, Tensor]:
    """The paper's cold/warm items ``[N+1]`` (bool): the bottom and top ``share`` of items 1..N by
    training count, ties broken by item id; the padding id 0 is in neither."""
    n = counts.numel() - 1
    order = torch.argsort(counts[1:], stable=True) + 1
    cut = int(round(share * n))
    cold = torch.zeros(n + 1, dtype=torch.bool)
    warm = torch.zeros(n + 1, dtype=torch.bool)
    cold[order[:cut]] = True
    warm[order[n - cut :]] = True
    return cold, warm


SPLITS = ("cold", "warm", "paper_cold", "paper_warm")


def split_cold_warm(out: dict[str, Any], prefix: str, scores: Tensor, masks: dict[str, Tensor]) -> None:
    """Step outputs that score the same rows again on each subset of :data:`SPLITS` (``<prefix><split>``)."""
    for split, mask in masks.items():
        out[f"scores/{prefix}{split}"], out[f"mask/{prefix}{split}"] = scores, mask


@torch.no_grad()
def training_user_vectors(backbone: Backbone, datamodule: SeqDataModule, batch_size: int = 256) -> Tensor:
    """The CF vectors of every training example's user ``[U, D]``, in dataset order (deterministic:
    no sampler or RNG, so every rank and every rerun fits the same statistics)."""
    data = datamodule.train_data
    chunks = [
        backbone.encode_user(data[(0, 0, 0, list(range(i, min(i + batch_size, len(data)))))]).float()
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(chunks)


def hit1_intervals(predictions: Path, s: Any) -> dict[str, float]:
    """95% bootstrap intervals over the test users of ``predictions.jsonl``: every scorer's score-mode
    Hit@1 (``test/<scorer>/hit@1_ci95_low|high``, the main model without a name) and the paired
    differences A-LLMRec - scorer (``test/diff/<scorer>/hit@1`` and its interval); the same for
    generate-mode hits (``test/<scorer>/generate/hit@1_ci95_*``, ``test/diff/<scorer>/generate/hit@1``)."""
    records = [json.loads(line) for line in predictions.read_text().splitlines()]

    def column(v: str, key: str) -> np.ndarray:
        return np.array([r[key if v == "main" else f"{v}/{key}"] for r in records])

    scorers = ["main", *s.variants, "backbone"]
    hits = {v: column(v, "rank") == 0 for v in scorers}
    out = hit_intervals(hits, "main", tuple(scorers[1:]), resamples=s.bootstrap_resamples, seed=s.bootstrap_seed)
    if "main" in s.generate_variants:
        generated = {v: column(v, "hit") for v in s.generate_variants}
        others = tuple(v for v in generated if v != "main")
        out.update(
            hit_intervals(generated, "main", others, metric="generate/hit@1", resamples=s.bootstrap_resamples, seed=s.bootstrap_seed)
        )
    return out


def write_predictions(records: list[dict[str, Any]], path: Path | None) -> None:
    """Gather every rank's per-user ``records`` and write them, sorted by user, to ``path`` as JSON lines
    (atomically; ``None`` on ranks other than 0 after the gather)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    if path is not None:
        unique = {r["user"]: r for r in records}  # sharding never duplicates; this guards it
        lines = "".join(json.dumps(unique[u]) + "\n" for u in sorted(unique))
        atomic_write_bytes(path, lambda fh: fh.write(lines.encode()))
