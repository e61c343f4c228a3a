"""Seeded negative sampling that never returns a user's history items."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from datamodules.constants import PAD_ID


def sample_negatives(history: set[int] | np.ndarray, n: int, num_items: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` distinct items uniformly from ``1..num_items`` minus ``history``.

    Used for the frozen evaluation candidates, where every list must be free of duplicates.
    Raises ``ValueError`` when fewer than ``n`` items are left to draw from.
    """
    banned = set(int(i) for i in history)
    banned.add(PAD_ID)
    available = num_items - len(banned - {PAD_ID})
    if available < n:
        raise ValueError(f"cannot draw {n} negatives: only {available} of {num_items} items are outside the history")
    out: list[int] = []
    chosen: set[int] = set()
    while len(out) < n:
        # Rejection sampling: histories are tiny against the catalogue, so one draw nearly always suffices.
        for item in rng.integers(1, num_items + 1, size=2 * (n - len(out)) + 4):
            item = int(item)
            if item not in banned and item not in chosen:
                chosen.add(item)
                out.append(item)
                if len(out) == n:
                    break
    return np.asarray(out, dtype=np.int64)


def sample_batch_negatives(history: Tensor, shape: tuple[int, ...], num_items: int, generator: torch.Generator) -> Tensor:
    """Uniform negatives for a training batch, never an item of the row's history.

    ``history [B, H]`` (padded with ``PAD_ID``) -> negatives of ``shape`` whose first dim is B.
    Negatives are drawn with replacement (duplicates across positions are harmless in training).
    """
    b = history.shape[0]
    if shape[0] != b:
        raise ValueError(f"shape[0] must equal the batch size {b}, got {shape}")
    neg = torch.randint(1, num_items + 1, shape, generator=generator)
    flat_hist = history.view(b, 1, -1)
    for _ in range(100):
        clash = (neg.view(b, -1, 1) == flat_hist).any(-1).view(shape)
        if not clash.any():
            return neg
        neg[clash] = torch.randint(1, num_items + 1, (int(clash.sum()),), generator=generator)
    raise ValueError("could not draw negatives outside the history in 100 rounds; is the catalogue almost all history?")
