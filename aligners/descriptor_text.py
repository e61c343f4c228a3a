"""FACE's contrastive alignment: descriptor words, in a fixed prompt, read by a frozen text encoder
(reference ``face.md`` sections 3.7-3.8).

The codebook is the LLM's token-embedding matrix, the alignment encoder a sentence-transformers
model (MiniLM by default). The two have different vocabularies, so for this alignment a descriptor
must be a word that is one whole token in both: :func:`shared_word_vocabulary` keeps those (the
word-level terms read each word's sentence embedding instead, and need no such word: the stage uses
this vocabulary only when ``stage.align_weight`` > 0). The encoder then reads the
word's own input embedding, exactly, and gradients reach the concept vectors straight through a
linear bridge (the official code's pseudo-inverse of the codebook map, followed by a least-squares
map from the LLM's token space into the encoder's; see :class:`DescriptorBridge`).

``DescriptorTextEncoder(word_embeds [N, n, d_te], is_user [N]) -> [N, d]`` builds
``[CLS] prompt w_1 , w_2 , ... , w_n [SEP]`` from input embeddings (the user prompt for user rows,
the item prompt for item rows: the pairing the official code meant, section 12.2) and pools it as
the sentence-transformers model does (mean or CLS, then L2 normalisation when the model has it).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aligners.vq_descriptor import word_vocabulary


def shared_word_vocabulary(
    llm_tokenizer, text_tokenizer, size: int = 20000, language: str = "en", min_length: int = 2, parts_of_speech: str = "any"
) -> tuple[list[int], list[int], list[str]]:
    """``(llm_ids, text_ids, words)``: common words (see :func:`word_vocabulary`) that are one whole
    token of the LLM and one token of the text encoder, sorted by LLM token id."""
    llm_ids, words = word_vocabulary(llm_tokenizer, size, language, min_length, parts_of_speech)
    keep_llm, keep_text, keep_words = [], [], []
    for llm_id, word in zip(llm_ids, words):
        pieces = text_tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1 and pieces[0] != text_tokenizer.unk_token_id:
            keep_llm.append(llm_id)
            keep_text.append(pieces[0])
            keep_words.append(word)
    if not keep_words:
        raise ValueError("no common word is a single token of both the LLM and the text encoder")
    return keep_llm, keep_text, keep_words


class DescriptorBridge(nn.Module):
    """Carries gradients from the text encoder's input embeddings back to the quantised concepts.

    Forward value: the encoder's exact embedding of each chosen word. Backward: through
    ``g(z) = (z - b_c) pinv(W_c)^T M``, where ``pinv(W_c)`` inverts the codebook map (the official
    code's path into the LLM's token space) and ``M [d_llm, d_te]`` is the least-squares map from
    the LLM's word embeddings to the encoder's, fitted once on the vocabulary. The official code
    feeds ``g``'s value itself, which is only the projection of the word onto ``W_c``'s row space;
    here the encoder reads the true word (reference section 12.6 suggests this deviation).
    """

    def __init__(self, llm_words: Tensor, text_words: Tensor) -> None:
        super().__init__()
        llm_words, text_words = llm_words.detach().float(), text_words.detach().float()
        bridge = torch.linalg.lstsq(llm_words, text_words).solution  # [d_llm, d_te]
        self.register_buffer("bridge", bridge, persistent=False)
        self.register_buffer("text_words", text_words.clone(), persistent=False)

    def forward(self, quantized: Tensor, indices: Tensor, codebook_map: nn.Linear) -> Tensor:
        """``quantized [N, n, d_w]`` (straight-through), ``indices [N, n]`` -> encoder inputs ``[N, n, d_te]``."""
        weight, bias = codebook_map.weight.detach().float(), codebook_map.bias.detach().float()
        to_tokens = torch.linalg.pinv(weight)  # [d_llm, d_w]
        path = ((quantized.float() - bias) @ to_tokens.T) @ self.bridge
        return self.text_words[indices] + (path - path.detach())


class DescriptorTextEncoder(nn.Module):
    """A frozen sentence-transformers model reading prompts whose last words are input embeddings.

    ``sentence_model``: a ``SentenceTransformer`` whose first module wraps a Hugging Face encoder
    (``auto_model``, ``tokenizer``). ``dtype``: autocast dtype of the encoder's matmuls ("bfloat16"
    halves the cost on CPUs with bf16 units and on GPUs; "float32" disables autocast).
    """

    def __init__(self, sentence_model: nn.Module, user_prompt: str, item_prompt: str, dtype: str = "bfloat16") -> None:
        super().__init__()
        first = sentence_model[0]
        self.model = first.auto_model.requires_grad_(False).eval()
        tokenizer = first.tokenizer
        pooling = next((m for m in list(sentence_model)[1:] if type(m).__name__ == "Pooling"), None)
        self.pooling = getattr(pooling, "pooling_mode", "mean")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"the text encoder pools by {self.pooling!r}; FACE's alignment supports mean and cls pooling")
        self.normalize = any(type(m).__name__ == "Normalize" for m in sentence_model)
        self.dtype = dtype
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        comma = tokenizer(",", add_special_tokens=False)["input_ids"]
        if len(comma) != 1:
            raise ValueError(f"the text encoder's tokenizer splits ',' into {comma}; expected one token")
        self.comma = comma[0]
        self.start = [start] if start is not None else []
        self.end = [end] if end is not None else []
        for name, prompt in (("user", user_prompt), ("item", item_prompt)):
            ids = self.start + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            self.register_buffer(f"{name}_prefix", torch.tensor(ids), persistent=False)

    def train(self, mode: bool = True) -> "DescriptorTextEncoder":
        super().train(mode)
        self.model.eval()  # frozen: no dropout, so the alignment loss is deterministic (reference 12.10)
        return self

    def _autocast(self, device: torch.device):
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.dtype))

    def forward(self, word_embeds: Tensor, is_user: Tensor) -> Tensor:
        embed = self.model.get_input_embeddings()
        n_rows, n_words, dim = word_embeds.shape
        device = word_embeds.device
        # w_1 , w_2 , ... , w_n [SEP]
        comma = embed.weight[self.comma].to(word_embeds.dtype).expand(n_rows, n_words, dim)
        body = torch.stack([word_embeds, comma], dim=2).flatten(1, 2)[:, :-1]
        if self.end:
            body = torch.cat([body, embed.weight[self.end].to(body.dtype).expand(n_rows, 1, dim)], dim=1)
        prefixes = [embed(self.user_prefix), embed(self.item_prefix)]
        width = max(len(p) for p in prefixes) + body.shape[1]
        inputs = torch.zeros(n_rows, width, dim, dtype=body.dtype, device=device)
        mask = torch.zeros(n_rows, width, dtype=torch.long, device=device)
        for rows, prefix in ((is_user, prefixes[0]), (~is_user, prefixes[1])):
            if rows.any():
                length = len(prefix) + body.shape[1]
                inputs[rows, :length] = torch.cat([prefix.to(body.dtype).expand(int(rows.sum()), -1, -1), body[rows]], dim=1)
                mask[rows, :length] = 1
        with self._autocast(device):
            hidden = self.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        hidden = hidden.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def info_nce(queries: Tensor, keys: Tensor, temperature: float, groups: Tensor | None = None) -> Tensor:
    """One-directional InfoNCE: row ``i`` of ``queries [N, d]`` should pick row ``i`` of ``keys [N, d]``.

    With ``groups [N]``, row ``i`` picks among the keys of its own group only (users among users,
    items among items)."""
    logits = queries @ keys.T / temperature
    if groups is not None:
        logits = logits.masked_fill(groups.unsqueeze(1) != groups.unsqueeze(0), float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def relaxed_word_text(weights: Tensor, near: Tensor, indices: Tensor, word_text: Tensor) -> Tensor:
    """The descriptors' sentence embedding approximated by their words' own embeddings ``[N, d]``.

    Value: ``normalize(sum_j word_text[indices[:, j]])``, the chosen words' single-word text
    embeddings (``word_text [K, d]``); gradients: through ``sum_j sum_m weights[:, j, m]
    word_text[near[:, j, m]]``, each slot's soft assignment ``weights [N, n, M]`` over its ``M``
    nearest words ``near [N, n, M]`` (straight-through, as a Gumbel-softmax without noise).
    """
    hard = word_text[indices].sum(1)
    dense = torch.zeros(len(indices), len(word_text), dtype=weights.dtype, device=weights.device)
    soft = dense.scatter_add(1, near.flatten(1), weights.flatten(1)) @ word_text.to(weights.dtype)
    return F.normalize(hard + soft - soft.detach(), dim=-1)


def word_usage_entropy(weights: Tensor, near: Tensor, vocab_size: int) -> Tensor:
    """Entropy of the soft word choice averaged over all rows and slots, divided by ``log(vocab_size)``
    (1: every word equally used; 0: one word). ``weights [N, n, M]`` over the words ``near [N, n, M]``
    (wav2vec 2.0's codebook diversity loss is one minus a perplexity of the same average)."""
    usage = torch.zeros(vocab_size, dtype=weights.dtype, device=weights.device)
    usage = usage.scatter_add(0, near.flatten(), weights.flatten()) / (near.numel() // near.shape[-1])
    return -(usage * usage.clamp_min(1e-12).log()).sum() / math.log(vocab_size)


def slot_info_nce(weights: Tensor, near: Tensor, indices: Tensor, word_text: Tensor, targets: Tensor,
                  temperature: float, groups: Tensor | None = None) -> Tensor:
    """InfoNCE of every word on its own: slot ``j`` of row ``i``, read as its word's text embedding,
    should pick row ``i``'s text ``targets [N, d]`` among the rows' texts (of its own group).

    A word that every entity has (a hub) is as near to every row's text and scores ``log N``, so
    each slot must say something about its own entity; the bag-of-words InfoNCE of
    :func:`relaxed_word_text` cannot see such a word, which is common to both sides of every logit.
    Value: the chosen words ``indices [N, n]``; gradients through each slot's soft assignment
    ``weights [N, n, M]`` over its nearest words ``near [N, n, M]`` (straight-through)."""
    group_ids = torch.zeros(len(indices), dtype=torch.long, device=indices.device) if groups is None else groups
    losses = []
    for g in torch.unique(group_ids):
        rows = (group_ids == g).nonzero().squeeze(1)
        sims = word_text @ targets[rows].T  # [K, G]: every word against the group's texts (constant)
        hard = sims[indices[rows]]  # [G, n, G]
        soft = torch.einsum("gnm,gnmk->gnk", weights[rows], sims[near[rows]].to(weights.dtype))
        logits = (hard + soft - soft.detach()) / temperature
        labels = torch.arange(len(rows), device=indices.device).repeat_interleave(indices.shape[1])
        losses.append(F.cross_entropy(logits.flatten(0, 1), labels, reduction="sum"))
    return torch.stack(losses).sum() / indices.numel()


def title_word_coverage(title_logits: Tensor, log_norm: Tensor, weights: Tensor) -> Tensor:
    """How far each item's slots are from covering its title's words: ``sum_t weights[:, t] *
    -log P(some slot picks word t)``, averaged over the rows with a title word.

    Slot ``j`` picks word ``t`` with ``p_j(t) = exp(title_logits[:, j, t] - log_norm[:, j])``: the
    relaxed assignment's softmax, ``log_norm [R, n]`` being the log-sum-exp of the slot's logits over
    its nearest words (a title word outside them counts for less than the last of them, so leaving it
    out of the sum changes little). A word is covered with ``1 - prod_j (1 - p_j(t))``: one slot per
    title word suffices and the other slots stay free. ``title_logits [R, n, T]`` are the slots' logits
    for the title words, ``weights [R, T]`` their weights (:func:`title_word_targets`; 0 = padding)."""
    logp = (title_logits - log_norm.unsqueeze(-1)).clamp(max=math.log1p(-1e-6))
    miss = -torch.log1p(-logp.exp()).sum(1)  # [R, T]: -log P(no slot picks it)
    # log(1 - exp(-miss)); where every p_j is tiny that is log(sum_j p_j), which keeps its gradient
    log_cover = torch.where(miss < 1e-4, logp.logsumexp(1), torch.log(-torch.expm1(-miss.clamp(min=1e-4))))
    has = weights.sum(1) > 0
    if not has.any():
        return title_logits.sum() * 0
    return -(weights[has] * log_cover[has]).sum() / has.sum()
