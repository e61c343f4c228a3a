"""CF training losses as pure functions; the training module picks one by config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.constants import PAD_ID


def full_softmax_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the whole catalogue: ``logits [P, N+1]`` (column PAD_ID ignored), ``targets [P]``."""
    logits = logits.index_fill(1, torch.tensor([PAD_ID], device=logits.device), float("-inf"))
    return F.cross_entropy(logits.float(), targets)


def bce_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Binary cross-entropy with sampled negatives: ``pos [P]`` labelled 1, ``neg [P, K]`` labelled 0.

    The SASRec paper's loss (one negative per position) and NCF's pointwise log loss; each positive
    and each negative term is averaged separately, then summed, as in the SASRec code.
    """
    pos_scores, neg_scores = pos_scores.float(), neg_scores.float()
    pos = F.binary_cross_entropy_with_logits(pos_scores, torch.ones_like(pos_scores))
    neg = F.binary_cross_entropy_with_logits(neg_scores, torch.zeros_like(neg_scores), reduction="none")
    return pos + neg.sum(-1).mean()


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Bayesian personalised ranking: ``-log sigmoid(pos - neg)``, ``pos [P]``, ``neg [P, K]``."""
    return -F.logsigmoid(pos_scores.float().unsqueeze(-1) - neg_scores.float()).mean()


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ table.T`` without materialising the ``[P, N]`` logits.

    Logits are computed a chunk of rows at a time, reduced to log-sum-exp in the forward pass,
    and recomputed in the backward pass (the "fused linear cross-entropy" trick). On a CPU the
    full logit matrix of a batch (~1500 x 12k floats) is memory-bound; chunks that fit in cache
    make the loss about twice as fast, and ``compute_dtype=bfloat16`` runs the matmuls on the
    CPU's bf16 units while the softmax stays in float32.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, table: Tensor, targets: Tensor, chunk: int, compute_dtype: torch.dtype) -> Tensor:
        h, e = hidden.detach().to(compute_dtype), table.detach().to(compute_dtype)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        picked = torch.empty_like(lse)
        for start in range(0, h.shape[0], chunk):
            logits = (h[start : start + chunk] @ e.T).float()
            lse[start : start + chunk] = torch.logsumexp(logits, dim=1)
            picked[start : start + chunk] = logits.gather(1, targets[start : start + chunk, None]).squeeze(1)
        ctx.save_for_backward(hidden, table, targets, lse)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, table, targets, lse = ctx.saved_tensors
        h, e = hidden.to(ctx.compute_dtype), table.to(ctx.compute_dtype)
        scale = grad_out.float() / h.shape[0]
        grad_h = torch.empty_like(hidden)
        grad_e = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
        rows = torch.arange(min(ctx.chunk, h.shape[0]), device=h.device)
        for start in range(0, h.shape[0], ctx.chunk):
            hc = h[start : start + ctx.chunk]
            probs = (hc @ e.T).float()
            probs.sub_(lse[start : start + ctx.chunk, None]).exp_()
            probs[rows[: hc.shape[0]], targets[start : start + ctx.chunk]] -= 1.0
            probs.mul_(scale)
            probs = probs.to(ctx.compute_dtype)
            grad_h[start : start + ctx.chunk] = (probs @ e).to(hidden.dtype)
            grad_e += (probs.T @ hc).float()
        return grad_h, grad_e.to(table.dtype), None, None, None


def chunked_softmax_loss(
    hidden: Tensor, table: Tensor, targets: Tensor, chunk: int = 256, compute_dtype: torch.dtype = torch.float32
) -> Tensor:
    """Full-catalogue cross-entropy ``[P, D] x [N, D] -> scalar`` with targets ``[P]`` in ``0..N-1``.

    Same value and gradients as ``F.cross_entropy(hidden @ table.T, targets)``, computed in chunks
    of ``chunk`` rows. Pass ``table = item_table[1:]`` and ``targets - 1`` to leave out padding.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    return _ChunkedSoftmaxCE.apply(hidden, table, targets, chunk, compute_dtype)
