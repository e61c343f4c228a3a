"""An LLM judge of descriptor words that did not train them (FACE, issue 15).

Given only an entity's descriptor words, a frozen causal LM ranks candidate titles by pointwise
mutual information::

    PMI(title) = log p(title | prompt with the words) - log p(title | the same prompt without them)

The second term removes each title's own prior likelihood (short or common titles are likely
whatever the words say); it does not depend on the words, so :class:`PMIJudge` computes it once per
title and caches it. Both terms run on the block-diagonal scoring path of
:func:`aligners.llm_ops.continuation_logprobs`: one prompt, all candidate titles after it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aligners.llm_ops import continuation_logprobs, pad, prompt_forward, reduce_continuations

# The wording matters to a 135M judge: on 10 planted Beauty cases (tests/test_face_readability.py)
# SmolLM2 ranked 8 right with these, 3 with "product" for "beauty product", 2-7 with five others.
# The baseline keeps the sentence and swaps the words for neutral ones, so PMI removes the title's
# prior and not the sentence's effect on it.
WITH_WORDS = "Here is a beauty product described in a few words: {words}. The product is"
WITHOUT_WORDS = "Here is a beauty product described in a few words: product, item. The product is"


class PMIJudge:
    """``rank(words [B] of lists, candidates [B, C] of title indices) -> scores [B, C]`` (higher = more likely).

    ``titles``: the display titles, indexed by ``candidates``; with ``max_title_tokens`` > 0 each is
    judged on its first that many tokens (the brand and product type come first; the cost of a row is
    mostly its 10 titles). The cache holds each title's log-likelihood after ``without`` (the words
    left out), filled on first use.
    """

    def __init__(self, llm: nn.Module, tokenizer, titles: list[str], with_words: str = WITH_WORDS, without: str = WITHOUT_WORDS,
                 max_title_tokens: int = 0) -> None:
        if "{words}" not in with_words:
            raise ValueError(f"the judge's prompt must contain {{words}}, got {with_words!r}")
        self.llm = llm.eval()
        self.tokenizer = tokenizer
        self.with_words = with_words
        cut = max_title_tokens if max_title_tokens > 0 else None
        self.titles = [(tokenizer(" " + t, add_special_tokens=False).input_ids or [tokenizer.eos_token_id])[:cut] for t in titles]
        self.without_ids = tokenizer(without).input_ids
        self.prior: dict[int, float] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def _loglik(self, prompts: list[list[int]], candidates: list[list[int]]) -> Tensor:
        device = next(self.llm.parameters()).device
        ids, mask = pad(prompts, self.pad_id, left=True)
        ids, mask = ids.to(device), mask.to(device)
        next_logits, cache = prompt_forward(self.llm, self.llm.get_input_embeddings()(ids), mask)
        conts = [[self.titles[c] for c in row] for row in candidates]
        token_logp, seg, off = continuation_logprobs(self.llm, cache, mask, next_logits, conts, self.pad_id, copy_cache=False)
        return reduce_continuations(token_logp, seg, off, len(candidates[0]), "sum").cpu()

    def _priors(self, candidates: list[list[int]], chunk: int = 32) -> Tensor:
        missing = sorted({c for row in candidates for c in row} - self.prior.keys())
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            for c, value in zip(part, self._loglik([self.without_ids], [part])[0].tolist()):
                self.prior[c] = value
        return torch.tensor([[self.prior[c] for c in row] for row in candidates])

    def rank(self, words: list[list[str]], candidates: Tensor) -> Tensor:
        rows = candidates.tolist()
        prompts = [self.tokenizer(self.with_words.format(words=", ".join(w))).input_ids for w in words]
        return self._loglik(prompts, rows) - self._priors(rows)
