"""Loss terms of the aligners as pure functions, so each can be tested on its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def matching_loss(item_latent: Tensor, text_latent: Tensor) -> Tensor:
    """A-LLMRec's latent matching: element-wise MSE between the CF item latent and the text latent ``[B, d']``."""
    return F.mse_loss(item_latent, text_latent)


def reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Element-wise MSE of an autoencoder's output against its input ``[B, D]``."""
    return F.mse_loss(reconstruction, target)


def recommendation_loss(user: Tensor, pos_item: Tensor, neg_item: Tensor, reduce: str = "mean") -> Tensor:
    """BCE of a user ``[B, D]`` against a positive and a negative item ``[B, D]`` (A-LLMRec stage 1).

    ``reduce="mean"`` scores with the mean over dimensions (``dot / D``, the official code);
    ``"dot"`` with the dot product (the paper's formula). Both terms are batch means, added.
    """
    if reduce not in ("mean", "dot"):
        raise ValueError(f"reduce must be 'mean' or 'dot', got {reduce!r}")
    pos, neg = (user * pos_item), (user * neg_item)
    pos, neg = (pos.mean(-1), neg.mean(-1)) if reduce == "mean" else (pos.sum(-1), neg.sum(-1))
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )


def causal_lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the target tokens only: ``logits [P, V]``, ``targets [P]``."""
    return F.cross_entropy(logits.float(), targets)
