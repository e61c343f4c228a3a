"""Batched operations of a frozen causal LM on spliced prompts: training loss, candidate scoring, greedy decoding.

All functions take the Hugging Face model (``base_model`` + output embeddings) and
``inputs_embeds``, so injected vectors and ordinary tokens are handled alike. Only the positions
that need logits go through the LM head: a 49k-word head on every prompt position would cost a
quarter of SmolLM2's forward pass for nothing.

Padding conventions: training sequences (prompt + answer) are right-padded; evaluation prompts are
left-padded with explicit position ids, so the last column is every row's last prompt token.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100


def pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[Tensor, Tensor]:
    """``(ids [B, L], mask [B, L])`` from token lists, padded on the left or the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def embed_tokens(llm: nn.Module, ids: Tensor, placeholder_ids: Tensor) -> Tensor:
    """Token embeddings ``[B, L, H]``; placeholder ids (not in the LLM's vocabulary) embed as token 0 until spliced."""
    safe = ids.masked_fill(torch.isin(ids, placeholder_ids), 0)
    return llm.get_input_embeddings()(safe)


def _head(llm: nn.Module, hidden: Tensor) -> Tensor:
    # 2-D input: a 3-D bf16 linear on CPU goes through bmm and copies the [V, H] weight per row (10x slower).
    flat = hidden.reshape(-1, hidden.shape[-1])
    return llm.get_output_embeddings()(flat).view(*hidden.shape[:-1], -1)


def answer_loss(llm: nn.Module, embeds: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of the labelled tokens: ``embeds [B, L, H]``, ``mask``/``labels [B, L]`` (``-100`` = ignore).

    Label ``t`` is predicted from position ``t - 1`` (the usual causal shift).
    """
    hidden = llm.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = _head(llm, hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def prompt_forward(llm: nn.Module, embeds: Tensor, mask: Tensor) -> tuple[Tensor, object]:
    """Run left-padded prompts ``[B, L, H]``: ``(logits of the next token [B, V], KV cache)``."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = llm.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    return _head(llm, out.last_hidden_state[:, -1]).float(), out.past_key_values


SCORE_REDUCTIONS = ("mean", "sum", "first_k")


def continuation_logprobs(
    llm: nn.Module,
    cache: object,
    mask: Tensor,
    next_logits: Tensor,
    continuations: list[list[list[int]]],
    pad_id: int,
    copy_cache: bool = True,
    vectors: Tensor | None = None,
    placeholder: int = -1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token log-probabilities of each continuation given its prompt.

    ``continuations[b][c]`` are token ids after prompt b; ``cache``/``mask``/``next_logits`` come
    from :func:`prompt_forward`. All C continuations of a prompt run in one sequence after it, with
    a block-diagonal causal mask (each sees the prompt and its own earlier tokens, never a sibling)
    and positions restarting after the prompt: the prompt's cache is read once instead of being
    copied C times, the difference between 0.6 s and 5 s per 8 users on CPU. Differentiable: with
    gradients on, the log-probabilities reach whatever produced the prompt's embeddings (the
    ``choice`` objective). ``copy_cache=False`` lets the cache grow in place (training: it is not
    reused; a cache that holds gradients cannot be deep-copied).

    ``vectors [B, C, H]``: continuation c of prompt b may hold the token ``placeholder`` (a
    ``{emb}`` in the answer template, :class:`aligners.prompt.PromptBuilder`); that position's input
    is ``vectors[b, c]`` instead of a token embedding, and it is not scored itself.

    Returns ``(token_logp [B, T], segment [B, T], offset [B, T])``: ``segment`` is the continuation
    index of each scored token (-1 = padding or a placeholder), ``offset`` its place among the
    continuation's scored tokens.
    """
    device = mask.device
    flat = [[tok for seq in row for tok in seq] for row in continuations]
    segment = [[k for k, seq in enumerate(row) for _ in seq] for row in continuations]
    offset = [[j for seq in row for j in range(len(seq))] for row in continuations]
    ids, cmask = pad(flat, pad_id, left=False)
    seg = pad([[s + 1 for s in row] for row in segment], 0, left=False)[0] - 1  # -1 = padding
    off = pad(offset, 0, left=False)[0]
    ids, seg, off, cmask = ids.to(device), seg.to(device), off.to(device), cmask.to(device).bool()
    # allowed[b, q, k]: same continuation and not in the future
    same = (seg.unsqueeze(2) == seg.unsqueeze(1)) & (off.unsqueeze(1) <= off.unsqueeze(2)) & cmask.unsqueeze(1)
    prompt_part = mask.bool().unsqueeze(1).expand(-1, ids.shape[1], -1)
    attn = torch.cat([prompt_part, same], dim=2).unsqueeze(1)  # [B, 1, T, P + T]
    positions = mask.sum(-1, keepdim=True) + off
    spliced = ids == placeholder
    has_vectors = bool(spliced.any())
    safe = ids.masked_fill(spliced, pad_id) if has_vectors else ids
    embeds = llm.get_input_embeddings()(safe)
    if has_vectors:
        if vectors is None:
            raise ValueError("continuations hold an embedding placeholder but no vectors were given")
        per_token = vectors[torch.arange(len(ids), device=device).unsqueeze(1), seg.clamp(min=0)]  # [B, T, H]
        embeds = torch.where(spliced.unsqueeze(-1), per_token.to(embeds.dtype), embeds)
    hidden = llm.base_model(
        inputs_embeds=embeds,
        attention_mask=attn,
        position_ids=positions,
        past_key_values=copy.deepcopy(cache) if copy_cache else cache,
        use_cache=True,
    ).last_hidden_state
    first = next_logits.log_softmax(-1)
    rows = []
    for row in range(len(continuations)):  # one prompt at a time bounds the [T, V] log-softmax
        n = int(cmask[row].sum())
        logp = _head(llm, hidden[row, : n - 1]).float().log_softmax(-1)  # predicts tokens 1..n-1
        tokens = safe[row, :n]
        inner = logp.gather(1, tokens[1:].unsqueeze(1)).squeeze(1)
        # a continuation's first token is predicted by the prompt's last position
        token_logp = torch.where(off[row, :n] == 0, first[row, tokens], torch.cat([inner.new_zeros(1), inner]))
        rows.append(F.pad(token_logp, (0, ids.shape[1] - n)))
    token_logp = torch.stack(rows)
    if has_vectors:  # placeholders are inputs, not scored tokens: later offsets count scored tokens only
        token_logp = token_logp.masked_fill(spliced, 0.0)
        same_segment_before = (seg.unsqueeze(2) == seg.unsqueeze(1)) & (off.unsqueeze(1) < off.unsqueeze(2))
        off = off - (same_segment_before & spliced.unsqueeze(1)).sum(-1)
        seg = seg.masked_fill(spliced, -1)
    return token_logp, seg, off


def reduce_continuations(
    token_logp: Tensor, seg: Tensor, off: Tensor, num: int, reduction: str = "mean", k: int = 0
) -> Tensor:
    """Score ``[B, num]`` of each continuation from :func:`continuation_logprobs`' output.

    ``mean``: mean log-probability per token (long titles are not penalised); ``sum``: the
    log-likelihood; ``first_k``: the mean over each continuation's first ``k`` tokens, where a
    title's distinguishing words are, instead of the copy of its remaining words.
    """
    if reduction not in SCORE_REDUCTIONS:
        raise ValueError(f"score reduction must be one of {list(SCORE_REDUCTIONS)}, got {reduction!r}")
    keep = seg >= 0
    if reduction == "first_k":
        keep &= off < k
    index = seg.clamp(min=0)
    weight = keep.to(token_logp.dtype)
    b = token_logp.shape[0]
    scores = token_logp.new_zeros(b, num).scatter_add(1, index, token_logp * weight)
    if reduction == "sum":
        return scores
    counts = token_logp.new_zeros(b, num).scatter_add(1, index, weight)
    return scores / counts.clamp(min=1)


def first_tokens(seq: list[int], k: int, placeholder: int = -1) -> list[int]:
    """The head of ``seq`` that holds its first ``k`` scored tokens (placeholders are not scored)."""
    taken = scored = 0
    while taken < len(seq) and scored < k:
        scored += seq[taken] != placeholder
        taken += 1
    return seq[:taken]


def score_continuations(
    llm: nn.Module, cache: object, mask: Tensor, next_logits: Tensor, continuations: list[list[list[int]]], pad_id: int,
    reduction: str = "mean", k: int = 0, vectors: Tensor | None = None, placeholder: int = -1,
) -> Tensor:
    """Score ``[B, C]`` of each continuation given its prompt (:func:`continuation_logprobs` then
    :func:`reduce_continuations`); ``first_k`` runs only each continuation's first ``k`` tokens.
    The cache is not modified. ``vectors``/``placeholder``: as :func:`continuation_logprobs`."""
    if reduction == "first_k":
        continuations = [[first_tokens(seq, k, placeholder) for seq in row] for row in continuations]
    token_logp, seg, off = continuation_logprobs(llm, cache, mask, next_logits, continuations, pad_id, True, vectors, placeholder)
    return reduce_continuations(token_logp, seg, off, max(len(row) for row in continuations), reduction, k)


def choice_loss(
    llm: nn.Module,
    embeds: Tensor,
    mask: Tensor,
    answers: list[list[list[int]]],
    target: Tensor,
    pad_id: int,
    reduction: str = "mean",
    k: int = 0,
    generate_weight: float = 0.0,
    vectors: Tensor | None = None,
    placeholder: int = -1,
) -> tuple[Tensor, int]:
    """Softmax cross-entropy over each prompt's candidate answers, scored as score mode ranks them.

    ``embeds``/``mask``: left-padded prompts; ``answers[b][c]`` the token ids of candidate c's answer;
    ``target [B]`` the right candidate's index. The scores come from :func:`continuation_logprobs`
    with gradients, so the loss reaches whatever made ``embeds``. ``first_k`` runs only each
    answer's first ``k`` tokens. ``generate_weight > 0`` (the ``both`` objective) adds that weight
    times the paper's generation loss, the mean negative log-probability of the target's whole
    answer. ``vectors``/``placeholder``: as :func:`continuation_logprobs`. Returns ``(loss, tokens run)``.
    """
    next_logits, cache = prompt_forward(llm, embeds, mask)
    if reduction == "first_k":  # the target's whole answer still runs when its generation term is wanted
        answers = [
            [a if generate_weight and c == t else first_tokens(a, k, placeholder) for c, a in enumerate(row)]
            for row, t in zip(answers, target.tolist())
        ]
    token_logp, seg, off = continuation_logprobs(llm, cache, mask, next_logits, answers, pad_id, False, vectors, placeholder)
    scores = reduce_continuations(token_logp, seg, off, len(answers[0]), reduction, k)
    loss = F.cross_entropy(scores, target)
    if generate_weight:
        on_target = (seg == target.unsqueeze(1)).to(token_logp.dtype)
        loss = loss - generate_weight * (token_logp * on_target).sum() / on_target.sum()
    return loss, int(mask.sum()) + int((seg >= 0).sum())


@torch.no_grad()
def greedy_generate(
    llm: nn.Module,
    cache: object,
    mask: Tensor,
    next_logits: Tensor,
    max_new_tokens: int,
    eos_id: int,
    quote_counts: Tensor | None = None,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Greedy decoding after :func:`prompt_forward` -> new token ids per row (eos excluded).

    A row stops at eos or, when ``quote_counts [V]`` is given, once it has produced two ``"``
    characters (the answer format is one quoted title). ``repetition_penalty`` > 1 applies the
    CTRL penalty to tokens already generated (the official A-LLMRec setting is 1.5). The cache is
    extended in place.
    """
    b = next_logits.shape[0]
    device = next_logits.device
    done = torch.zeros(b, dtype=torch.bool, device=device)
    quotes = torch.zeros(b, dtype=torch.long, device=device)
    positions = mask.sum(-1)
    generated: list[Tensor] = []
    logits = next_logits
    for _ in range(max_new_tokens):
        if repetition_penalty != 1.0 and generated:
            seen = torch.stack(generated, 1)
            picked = logits.gather(1, seen)
            logits = logits.scatter(1, seen, torch.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty))
        token = logits.argmax(-1).masked_fill(done, eos_id)
        generated.append(token)
        done |= token == eos_id
        if quote_counts is not None:
            quotes += quote_counts[token]
            done |= quotes >= 2
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], dim=1)
        out = llm.base_model(
            inputs_embeds=llm.get_input_embeddings()(token.unsqueeze(1)),
            attention_mask=mask,
            position_ids=positions.unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        )
        positions = positions + 1
        logits = _head(llm, out.last_hidden_state[:, -1]).float()
    if not generated:
        return [[] for _ in range(b)]
    rows = torch.stack(generated, 1).tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]
