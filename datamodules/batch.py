"""The batch type that flows from the datamodules to the models."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class SeqBatch:
    """One mini-batch of users.

    Shapes (B = batch, L = sequence length, C = candidates, K = negatives per position):

    - ``user_ids [B]``: internal user ids (``>= 1``).
    - ``item_seq [B, L]``: the user's history, left-padded with ``PAD_ID``; for training
      batches of sequential models it is the input sequence of next-item prediction.
    - ``pos_items``: training targets, ``[B, L]`` for sequences (``PAD_ID`` where there is
      no target) or ``[B]`` for user-item pairs.
    - ``neg_items``: sampled negatives, ``[B, L, K]`` or ``[B, K]``; ``None`` when the loss
      needs none.
    - ``candidates [B, C]``: evaluation candidates, the positive in column 0; ``None`` for data
      without a sampled protocol (``rlmrec``).
    - ``history``: for full ranking, ``[B, H]`` right-padded items to mask (everything the
      user interacted with before the target; for multi-target data the training items only).
    - ``targets [B, T]``: for multi-target evaluation, the split's items of each user,
      right-padded with ``PAD_ID``; ``None`` for leave-one-out data (the target is
      ``candidates[:, 0]``).
    """

    user_ids: Tensor
    item_seq: Tensor | None = None
    pos_items: Tensor | None = None
    neg_items: Tensor | None = None
    candidates: Tensor | None = None
    history: Tensor | None = None
    targets: Tensor | None = None

    def to(self, device: torch.device | str) -> "SeqBatch":
        return SeqBatch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])


def _move(value: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if value is None else value.to(device, non_blocking=True)
