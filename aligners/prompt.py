"""A-LLMRec prompts: item titles, each followed by a placeholder for its projected embedding.

The official template (reference section 4.4), for Beauty::

    [UserRep] is a user representation. This user has bought "t1"[HistoryEmb],"t2"[HistoryEmb]
    in the previous. Recommend one next item for this user to buy next from the following item
    title set, "c1"[CandidateEmb],...,"c20"[CandidateEmb]. The recommendation is

and the target ``' "<title>"' + eos``. Placeholders are special tokens of the tokenizer only: their
positions are overwritten by projected vectors before the LLM sees them, so the LLM's vocabulary
and weights are never touched. Choices that differ from the official code (documented in
``conf/prompt/default.yaml``): the user vector takes the ``[UserRep]`` position at the start (after a
BOS token, for tokenizers that add one, and after ``prefix``) instead of an extra position before the
BOS; the glued
"representation.This" gets its space; titles are HTML-unescaped, whitespace-collapsed, double quotes
become single quotes (so an answer's first quoted span is the title) and are cut to
``max_title_tokens``. The LLM-only baseline uses the same text without placeholders and without
the user sentence.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

USER_TOKEN = "[UserRep]"
HISTORY_TOKEN = "[HistoryEmb]"
CANDIDATE_TOKEN = "[CandidateEmb]"
PLACEHOLDERS = (USER_TOKEN, HISTORY_TOKEN, CANDIDATE_TOKEN)


@dataclass
class PromptConfig:
    """Prompt wording (the ``prompt`` group; per dataset in ``conf/prompt/``)."""

    name: str = "default"
    prefix: str = ""  # (str) text before everything else, so that the user vector is not the first position (the attention sink)
    user: str = "[UserRep] is a user representation."  # (str) sentence carrying the user vector; dropped for LLM-only
    template: str = (
        " This user has bought {history} in the previous. Recommend one next item for this user to buy next "
        "from the following item title set, {candidates}. The recommendation is"
    )  # (str) needs {history} and {candidates}
    item: str = '"{title}"{emb}'  # (str) one item in a list; {emb} is where its embedding goes (official: after the title)
    separator: str = ","  # (str) between items of a list
    answer: str = ' "{title}"'  # (str) the target after the prompt; the tokenizer's eos token follows; an {emb} in it takes the candidate's vector in score mode and the choice objective
    num_history: int = 10  # (int) most recent history items shown
    max_title_tokens: int = 32  # (int) titles are cut to this many LLM tokens (0 = never)

    def __post_init__(self) -> None:
        for field_name in ("{history}", "{candidates}"):
            if field_name not in self.template:
                raise ValueError(f"prompt.template must contain {field_name}, got {self.template!r}")
        if USER_TOKEN not in self.user:
            raise ValueError(f"prompt.user must contain {USER_TOKEN}, got {self.user!r}")
        if "{title}" not in self.item or "{emb}" not in self.item or "{title}" not in self.answer:
            raise ValueError(f"prompt.item must contain {{title}} and {{emb}}, prompt.answer {{title}}; got {self.item!r}, {self.answer!r}")
        if self.num_history < 1 or self.max_title_tokens < 0:
            raise ValueError(
                f"prompt.num_history must be >= 1 and prompt.max_title_tokens >= 0, got {self.num_history}, {self.max_title_tokens}"
            )


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used to compare an answer with a title."""
    return " ".join(text.lower().split())


def parse_answer(text: str) -> str:
    """The first double-quoted span of a generated answer (all of it when there is no quote), normalised."""
    start = text.find('"')
    if start < 0:
        return normalize(text)
    end = text.find('"', start + 1)
    return normalize(text[start + 1 :] if end < 0 else text[start + 1 : end])


class PromptBuilder:
    """Builds prompt and answer token ids from item ids.

    - ``titles``: display title of every item id (index 0 = padding), cleaned and truncated once.
    - ``prompts(history, candidates, with_embeddings) -> list[list[int]]``: one prompt per row;
      ``history[b]`` oldest -> newest (the last ``num_history`` are shown), ``candidates[b]`` in
      prompt order.
    - ``answers(items) -> list[list[int]]``: ``answer`` text ids plus eos for each item.
    """

    def __init__(self, tokenizer, cfg: PromptConfig, raw_titles: list[str]) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        tokenizer.add_tokens(list(PLACEHOLDERS), special_tokens=True)
        self.placeholder_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS}
        if tokenizer.eos_token_id is None:
            raise ValueError("the LLM's tokenizer has no eos token; the answer format needs one")
        self.eos_id = int(tokenizer.eos_token_id)
        self.titles = self._display_titles(raw_titles)

    def _display_titles(self, raw: list[str]) -> list[str]:
        cleaned = [" ".join(html.unescape(t).replace('"', "'").split()) or "No title" for t in raw]
        limit = self.cfg.max_title_tokens
        if not limit:
            return cleaned
        ids = self.tokenizer(cleaned, add_special_tokens=False).input_ids
        return [t if len(i) <= limit else self.tokenizer.decode(i[:limit]).strip() for t, i in zip(cleaned, ids)]

    def _items(self, items: list[int], placeholder: str | None) -> str:
        return self.cfg.separator.join(self.cfg.item.format(title=self.titles[i], emb=placeholder or "") for i in items)

    def text(self, history: list[int], candidates: list[int], with_embeddings: bool = True) -> str:
        history = history[-self.cfg.num_history :]
        body = self.cfg.template.format(
            history=self._items(history, HISTORY_TOKEN if with_embeddings else None),
            candidates=self._items(candidates, CANDIDATE_TOKEN if with_embeddings else None),
        )
        return self.cfg.prefix + (self.cfg.user + body if with_embeddings else body.lstrip())

    def prompts(self, history: list[list[int]], candidates: list[list[int]], with_embeddings: bool = True) -> list[list[int]]:
        texts = [self.text(h, c, with_embeddings) for h, c in zip(history, candidates)]
        return self.tokenizer(texts).input_ids

    @property
    def answer_has_embedding(self) -> bool:
        return "{emb}" in self.cfg.answer

    def answers(self, items: list[int], with_embeddings: bool = False) -> list[list[int]]:
        """Answer ids (plus eos) of ``items``; an ``{emb}`` in ``prompt.answer`` becomes the candidate
        placeholder with ``with_embeddings`` (score mode, the choice objective) and nothing otherwise
        (generation: the LLM names the item from the prompt alone)."""
        emb = CANDIDATE_TOKEN if with_embeddings else ""
        texts = [self.cfg.answer.format(title=self.titles[i], emb=emb) for i in items]
        return [ids + [self.eos_id] for ids in self.tokenizer(texts, add_special_tokens=False).input_ids]

    def quote_counts(self, vocab_size: int) -> list[int]:
        """Number of ``"`` characters in each token's text ``[V]``: generation stops after the closing quote."""
        pieces = self.tokenizer.batch_decode([[i] for i in range(vocab_size)])
        return [p.count('"') for p in pieces]
