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


CHUNK_BYTES = 4 << 20
"""Target size of one chunk of float32 logits ``[N, rows]``: a few MiB stay in a core's share of the
last-level cache, so the passes over a chunk (max, exp, sum, two gradient matmuls) do not go to DRAM."""


def auto_chunk(num_items: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk for a catalogue of ``num_items``: ``chunk_bytes`` of float32 logits, a multiple of 16
    in [16, 256] (Beauty's 12,101 items: 80 rows)."""
    rows = chunk_bytes // (4 * max(num_items, 1))
    return int(min(256, max(16, rows // 16 * 16)))


SAFE_SHIFT_GAP = 60.0
"""A chunk is shifted by an upper bound of its logits instead of their max when the bound lies less
than this above each row's target logit: the target's own term then keeps the sum of exponentials
at or above e^-60, far from float32's underflow, so nothing of weight is lost."""


def _chunk_logsumexp_and_grads(
    hidden: Tensor, table: Tensor, targets: Tensor, chunk: int, compute_dtype: torch.dtype, grads: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Sum over rows of ``logsumexp(logits) - logits[target]`` and, with ``grads``, the gradients of the
    *mean* w.r.t. ``hidden`` and ``table``, from one pass over each chunk of logits.

    Measured on a 2-core AVX2 CPU (Beauty: 12,101 items, D = 64, about 1,500 rows a step):

    - Each chunk's logits are computed transposed, ``table @ hidden_chunk.T -> [N, rows]``: with the
      thin inner dimension, the large catalogue as the first operand ran at 100-120 GFLOP/s against
      33-44 for ``hidden_chunk @ table.T`` (64-row chunks, MKL).
    - In float32 the softmax shift is an upper bound, ``|h_r| * max_j |e_j|``, folded into the same
      matmul as an extra column (``[E, 1] @ [H, -shift].T``), instead of a max over the chunk: a max
      along the catalogue axis of ``[N, rows]`` cost more than the exponentials. Rows whose bound is
      not safe (:data:`SAFE_SHIFT_GAP`) take the max as usual. Any shift gives the same value.
    - The softmax normalisation and the 1/P of the mean are applied to the small ``[rows, D]``
      operands and results rather than the ``[N, rows]`` chunk, so a chunk is written once and read
      four times (exp, sum, two matmuls).
    - Everything per row rather than per chunk is done once for all rows, outside the loop: the
      target logits, the shift column, which chunks may take the bound, and each target's ``-1``
      (a gather and a scatter-add over all rows). The loop is then ten operations per chunk
      instead of about twenty: 30 Beauty steps took 3.36-3.82 s against 3.73-4.04 s (medians of
      6-10 alternating repeats of the same steps, forward and backward).
    - Tried and not kept: a floor on the shifted logits before ``exp`` (its denormal path is 25x
      slower, but trained SASRec logits do not reach it, and the floor's pass made the loss 15%
      slower); the catalogue reduction of ``probs.T @ E`` split in two halves as a batched matmul
      (2% faster, inside the noise).
    - The target logits are computed in float32 from the operands, also when the matmuls run in
      bf16; the bf16 value stays within its test's 1e-2 of float32.
    """
    num, dim = hidden.shape
    e = table.detach().to(compute_dtype)
    h_all = hidden.detach().float()
    table32 = table.detach().float()
    picked = (h_all * table32[targets]).sum(1)  # each row's target logit
    starts = range(0, num, chunk)
    # a bf16 shift column would cost the logits their precision, so only float32 folds the bound in
    bounded = [False] * len(starts)
    if compute_dtype == torch.float32:
        bound = h_all.norm(dim=1) * table32.norm(dim=1).max()  # >= every logit of the row
        safe = (bound - picked) < SAFE_SHIFT_GAP
        bounded = F.pad(safe, (0, len(starts) * chunk - num), value=True).view(-1, chunk).all(1).tolist()
        e_shift = torch.cat([e, torch.ones(len(e), 1, dtype=e.dtype, device=e.device)], dim=1)
        h_shift = torch.cat([h_all, -bound.unsqueeze(1)], dim=1)
    lse = torch.empty(num, dtype=torch.float32, device=hidden.device)  # each row's logsumexp
    grad_h = torch.empty(num, dim, dtype=torch.float32, device=hidden.device) if grads else None
    grad_e = torch.zeros(table.shape, dtype=torch.float32, device=table.device) if grads else None
    scale = 1.0 / num
    # One buffer for every chunk's logits: a fresh 4 MB tensor per chunk is fresh pages to fault in and
    # zero (the reused buffer made the loss 10-18% faster).
    buffer = torch.empty(len(e), min(chunk, num), dtype=torch.float32, device=hidden.device)
    for start, by_bound in zip(starts, bounded):
        stop = min(start + chunk, num)
        logits = buffer.view(-1)[: len(e) * (stop - start)].view(len(e), stop - start)  # the tail uses the start
        if by_bound:
            torch.mm(e_shift, h_shift[start:stop].T, out=logits)  # [N, rows], already shifted
            shift = bound[start:stop]
        else:
            if compute_dtype == torch.float32:
                torch.mm(e, h_all[start:stop].T, out=logits)
            else:
                logits.copy_(e @ h_all[start:stop].to(compute_dtype).T)
            shift = logits.amax(0)
            logits.sub_(shift)
        probs = logits.exp_()  # unnormalised, in place
        sums = probs.sum(0)
        torch.add(sums.log(), shift, out=lse[start:stop])
        if not grads:
            continue
        weight = sums.reciprocal_().mul_(scale).unsqueeze(1)  # softmax normalisation and the mean's 1/P, per row
        h = h_all[start:stop]
        # d(mean)/dh_r = (softmax_r @ E - e_target_r) / P ; d(mean)/dE = (softmax.T @ H - onehot.T @ H) / P
        if compute_dtype == torch.float32:
            torch.mm(probs.T, e, out=grad_h[start:stop]).mul_(weight)
            grad_e.addmm_(probs, h * weight)
        else:
            probs = probs.to(compute_dtype)
            grad_h[start:stop] = (probs.T @ e).float().mul_(weight)
            grad_e += (probs @ (h * weight).to(compute_dtype)).float()
    if grads:  # each target's -1, for every row at once
        grad_h.sub_(table32[targets], alpha=scale)
        grad_e.index_add_(0, targets, h_all, alpha=-scale)
    return (lse - picked).sum(), grad_h, grad_e


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ table.T`` without materialising the ``[P, N]`` logits.

    The loss is a scalar mean, so its gradients are those of ``grad_out * mean``: they are computed in
    the forward pass from the same chunk of logits that gives the log-sum-exp, and the backward pass
    only scales them (the "fused linear cross-entropy" of Liger-Kernel). That is one logits matmul per
    chunk instead of two. ``compute_dtype=bfloat16`` runs the three matmuls in bf16 (fast only on a
    device with native bf16); the softmax, the sums and the gradients' accumulation stay in float32.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, table: Tensor, targets: Tensor, chunk: int, compute_dtype: torch.dtype) -> Tensor:
        total, grad_h, grad_e = _chunk_logsumexp_and_grads(hidden, table, targets, chunk, compute_dtype, grads=True)
        ctx.save_for_backward(grad_h, grad_e)
        ctx.dtypes = hidden.dtype, table.dtype
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_e = ctx.saved_tensors
        scale = grad_out.float()
        return (grad_h * scale).to(ctx.dtypes[0]), (grad_e * scale).to(ctx.dtypes[1]), None, None, None


def chunked_softmax_loss(
    hidden: Tensor, table: Tensor, targets: Tensor, chunk: int = 0, compute_dtype: torch.dtype = torch.float32
) -> Tensor:
    """Full-catalogue cross-entropy ``[P, D] x [N, D] -> scalar`` with targets ``[P]`` in ``0..N-1``.

    Same value and gradients as ``F.cross_entropy(hidden @ table.T, targets)``, computed in chunks
    of ``chunk`` rows (0 = :func:`auto_chunk`). Pass ``table = item_table[1:]`` and ``targets - 1``
    to leave out padding. Without gradients to compute, only the value is.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    chunk = chunk or auto_chunk(table.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or table.requires_grad):
        return _ChunkedSoftmaxCE.apply(hidden, table, targets, chunk, compute_dtype)
    total, _, _ = _chunk_logsumexp_and_grads(hidden, table, targets, chunk, compute_dtype, grads=False)
    return total / hidden.shape[0]
