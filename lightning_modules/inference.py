"""Use what was trained: load a finished run and ask it for recommendations or descriptor words.

    from lightning_modules.inference import load_run
    run = load_run("runs/beauty/cf_pretrain/sasrec")
    run.recommend(user="A1YJEY40YUW4SE", k=5)          # [Recommendation(item_id, title, score), ...]

:func:`load_run` rebuilds a run from its own ``config.yaml`` and ``weights.pt``, with the frozen parts
rebuilt as the run built them, and answers in raw ids and titles:

- ``cf_pretrain`` (every backbone): ``recommend(user=ID | [IDs], k)`` from the user's whole history,
  or ``recommend(history=[item IDs], k)`` for a user the data has never seen (sequential backbones);
  items already in the history are left out.
- ``align_stage2``: ``recommend(user=ID, candidates=[item IDs] | None, mode="score" | "generate")``
  ranks the candidates (by default the user's frozen test candidates) with the history the test
  saw, exactly as the run's evaluation scored them; ``generate`` adds the LLM's answer and the
  candidate it names (or None).
- ``face``: ``describe(item=ID)`` / ``describe(user=ID)`` give descriptor words, and ``recommend``
  answers carry each item's words.

Bad requests raise :class:`RequestError` (the command line prints it and exits with status 2).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aligners.prompt import normalize, parse_answer
from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID
from datamodules.datamodule import SeqDataModule, gather_padded
from lightning_modules.align_stage2 import build_align_stage2
from lightning_modules.artifacts import load_backbone
from lightning_modules.config import load_run_config
from lightning_modules.face import build_face
from lightning_modules.face_outputs import user_vectors
from lightning_modules.rundir import stale_reasons
from lightning_modules.training import device_for

ANSWERING_STAGES = ("cf_pretrain", "align_stage2", "face")


class RequestError(ValueError):
    """A request the run cannot answer: not a finished run, an unknown id, a call its stage has not."""


@dataclass
class Recommendation:
    item_id: str
    title: str
    score: float
    words: list[str] | None = None  # the item's descriptor words (face runs)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Ranking(list):
    """Recommendations, best first; in ``generate`` mode also the LLM's ``answer`` and the candidate it names."""

    answer: str | None = None
    named_item_id: str | None = None


def load_run(run_dir: str | Path, device: str | torch.device | None = None) -> "Recommender":
    """The finished run in ``run_dir``, ready to answer (see the module docstring)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.yaml").is_file():
        finished = sorted(str(p.parent) for p in run_dir.glob("**/metrics.json"))[:5] if run_dir.is_dir() else []
        hint = f"; finished runs below it: {finished}" if finished else ""
        raise RequestError(f"{run_dir} is not a finished run (it needs config.yaml and metrics.json){hint}")
    stale = stale_reasons(run_dir)
    if stale:
        raise RequestError(f"{run_dir} is stale: {'; '.join(stale)}. Rebuild it (make train-all rebuilds stale stages)")
    cfg = load_run_config(run_dir / "config.yaml")
    cfg.paths.run_dir = str(run_dir)  # where its weights are, wherever paths.runs pointed when it trained
    kind = {"cf_pretrain": CFRecommender, "align_stage2": LLMRecommender, "face": FACERecommender}.get(cfg.stage.name)
    if kind is None:
        raise RequestError(
            f"{run_dir} is an {cfg.stage.name} run, an intermediate stage; load one of {list(ANSWERING_STAGES)}"
        )
    return kind(cfg, run_dir, torch.device(device) if device else device_for(cfg))


class Recommender:
    """What every loaded run shares: the data, raw-id lookups and input checks."""

    def __init__(self, cfg: Any, run_dir: Path, data: Any) -> None:
        self.cfg, self.run_dir, self.data = cfg, run_dir, data
        self.stage = cfg.stage.name
        self._items = {raw: i for i, raw in enumerate(data.item_raw) if i != PAD_ID}
        self._users = {raw: u for u, raw in enumerate(data.user_raw) if u != PAD_ID}

    def ids(self, kind: str, limit: int = 0) -> list[str]:
        """Raw ``"items"`` or ``"users"`` ids the run knows, in internal-id order (``limit`` 0 = all)."""
        raw = (self.data.item_raw if kind == "items" else self.data.user_raw)[1:]
        return raw[:limit] if limit else list(raw)

    def _lookup(self, ids: list[str], kind: str) -> Tensor:
        table = self._items if kind == "items" else self._users
        unknown = [i for i in ids if i not in table]
        if unknown:
            raise RequestError(
                f"unknown {kind[:-1]} id {unknown[0]!r}{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}: "
                f"{self.run_dir} knows {len(table)} {kind}; list some with `llmrec ids {self.run_dir} --{kind} --limit 20`"
            )
        return torch.tensor([table[i] for i in ids], dtype=torch.long)

    def _sequences(self, users: Tensor, drop_last: int = 0) -> list[list[int]]:
        offsets, items = self.data.seq_offsets, self.data.seq_items
        return [items[offsets[u] : offsets[u + 1] - drop_last].tolist() for u in users.tolist()]

    def _recent(self, histories: list[list[int]]) -> Tensor:
        """Left-padded ``[B, L]`` of each history's last ``data.max_len`` items."""
        recent = [h[-self.cfg.data.max_len :] for h in histories]
        lengths = torch.tensor([len(h) for h in recent], dtype=torch.long)
        flat = torch.tensor([i for h in recent for i in h] or [PAD_ID], dtype=torch.long)
        starts = torch.cumsum(lengths, 0) - lengths
        return gather_padded(flat, starts, lengths, left=True)

    def _recommendation(self, item: int, score: float) -> Recommendation:
        return Recommendation(self.data.item_raw[item], self.data.titles[item], round(float(score), 6))


def _one_or_many(value: str | list[str] | None) -> tuple[list[str], bool]:
    if value is None:
        return [], False
    return ([value], True) if isinstance(value, str) else (list(value), False)


class CFRecommender(Recommender):
    """A ``cf_pretrain`` run: its backbone scores every item."""

    def __init__(self, cfg: Any, run_dir: Path, device: torch.device) -> None:
        datamodule = SeqDataModule(cfg.data, seed=cfg.seed)
        datamodule.prepare_data()
        datamodule.setup()
        super().__init__(cfg, run_dir, datamodule.data)
        self.backbone = load_backbone(run_dir, self.data).to(device)
        self.device = device

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.data.num_items:
            raise RequestError(f"k must be in 1..{self.data.num_items} (the number of items), got {k}")

    @torch.no_grad()
    def _top(self, users: Tensor, histories: list[list[int]], k: int) -> list[Ranking]:
        out = []
        for begin in range(0, len(histories), 256):
            part = histories[begin : begin + 256]
            batch = SeqBatch(user_ids=users[begin : begin + 256], item_seq=self._recent(part)).to(self.device)
            scores = self.backbone.score_all(batch).float().cpu()
            scores[:, PAD_ID] = float("-inf")
            for row, history in zip(scores, part):
                row[torch.tensor(history, dtype=torch.long)] = float("-inf")  # nothing the user already has
                top = row.topk(min(k, int(torch.isfinite(row).sum())))
                out.append(Ranking(self._recommendation(i, s) for i, s in zip(top.indices.tolist(), top.values.tolist())))
        return out

    def recommend(self, user: str | list[str] | None = None, history: list[str] | None = None, k: int = 10):
        """The ``k`` best items for known ``user`` id(s) (from their whole history) or for an unseen user's
        ``history`` of raw item ids, best first; a list of rankings for a list of users."""
        self._check_k(k)
        if (user is None) == (history is None):
            raise RequestError("pass exactly one of user=<id or ids> and history=<item ids>")
        if history is not None:
            if self.backbone.input_kind != "sequence" and self.backbone.trainable:
                raise RequestError(
                    f"backbone {self.cfg.backbone.name!r} scores known user ids, not item histories; pass a user id, "
                    "or use a run of a sequential backbone (sasrec, gru4rec, nextitnet)"
                )
            items = self._lookup(list(history), "items")
            return self._top(torch.zeros(1, dtype=torch.long), [items.tolist()], k)[0]
        ids, single = _one_or_many(user)
        users = self._lookup(ids, "users")
        rankings = self._top(users, self._sequences(users), k)
        return rankings[0] if single else rankings


class FACERecommender(CFRecommender):
    """A ``face`` run: its backbone after FACE recommends; its mapper gives every entity's words."""

    def __init__(self, cfg: Any, run_dir: Path, device: torch.device) -> None:
        datamodule, module, _ = build_face(cfg, device)
        Recommender.__init__(self, cfg, run_dir, datamodule.data)
        weights = torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
        words = list(module.mapper.words)
        saved = weights.get("words")
        if saved is not None:
            size, differs = len(saved), saved != words
        else:  # runs trained before the word list was saved (run 4 of issue 15 and earlier): its length only
            bias = weights["mapper"].get("word_bias")
            size = len(bias) if bias is not None else len(words)
            differs = size != len(words)
        if differs:
            first = next((f" (word {i} is {a!r} there, {b!r} here)" for i, (a, b) in enumerate(zip(saved or [], words)) if a != b), "")
            raise ValueError(
                f"{run_dir} was trained over {size} descriptor words; this code builds {len(words)} from its config{first}, "
                "so its word indices would name other words (runs before FACE's run 3 of issue 15 required every word "
                "to be one token of the text encoder too; a new wordfreq or lemminflect can change the list). Load it "
                "with the commit and packages that trained it, or train it again"
            )
        module.backbone.load_state_dict(weights["backbone"])
        module.mapper.load_state_dict(weights["mapper"])
        self.module = module.to(device).eval()
        self.backbone, self.device = module.backbone, device

    def _words(self, vectors: Tensor) -> list[list[str]]:
        return self.module.mapper.explain(self.module.describe(vectors))

    def describe(self, item: str | list[str] | None = None, user: str | list[str] | None = None):
        """Descriptor words of ``item`` or ``user`` id(s) (a user from their training history, as ``descriptors.csv``)."""
        if (item is None) == (user is None):
            raise RequestError("pass exactly one of item=<id or ids> and user=<id or ids>")
        ids, single = _one_or_many(item if item is not None else user)
        if item is not None:
            vectors = self.backbone.item_embeddings(self._lookup(ids, "items").to(self.device)).detach().float()
        else:
            vectors = user_vectors(self.backbone, self.data, self._lookup(ids, "users"), self.cfg.data.max_len)
        words = self._words(vectors)
        return words[0] if single else words

    def recommend(self, user: str | list[str] | None = None, history: list[str] | None = None, k: int = 10):
        rankings = super().recommend(user=user, history=history, k=k)
        for ranking in [rankings] if isinstance(rankings, Ranking) else rankings:
            words = self.describe(item=[r.item_id for r in ranking]) if ranking else []
            for rec, w in zip(ranking, words):
                rec.words = w
        return rankings


class LLMRecommender(Recommender):
    """An ``align_stage2`` run: the frozen LLM with the trained projectors ranks candidates."""

    def __init__(self, cfg: Any, run_dir: Path, device: torch.device) -> None:
        datamodule, module = build_align_stage2(cfg, device)
        super().__init__(cfg, run_dir, datamodule.data)
        weights = torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
        module.projector.load_state_dict(weights["projector"])
        self.module = module.to(device).eval()
        self.device = device

    def recommend(self, user: str | list[str], candidates: list[str] | None = None, mode: str = "score", k: int = 0):
        """Rank ``candidates`` (raw item ids; default: the user's frozen test candidates) for ``user``, with
        the history the test saw (everything but the test item). ``mode="generate"`` also decodes the
        LLM's answer and names the candidate it picks (``Ranking.answer``, ``Ranking.named_item_id``).
        ``k`` keeps the best ``k`` (0 = all)."""
        if mode not in ("score", "generate"):
            raise RequestError(f"mode must be score or generate, got {mode!r}")
        ids, single = _one_or_many(user)
        users = self._lookup(ids, "users")
        if candidates is None:
            evaluated = set(self.data.eval_users.tolist())
            missing = [raw for raw, u in zip(ids, users.tolist()) if u not in evaluated]
            if missing:
                raise RequestError(f"user {missing[0]!r} has no frozen test candidates (fewer than 3 interactions); pass candidates")
            cands = self.data.test_candidates[users]
        else:
            cands = self._lookup(list(candidates), "items").expand(len(users), -1)
        out = []
        size = self.cfg.stage.eval_batch_size
        for begin in range(0, len(users), size):
            part = users[begin : begin + size]
            batch = SeqBatch(user_ids=part, item_seq=self._recent(self._sequences(part, drop_last=1)), candidates=cands[begin : begin + size])
            scores, answers = self.module.answer(batch.to(self.device), generate=mode == "generate")
            for row, (score_row, cand_row) in enumerate(zip(scores.cpu(), batch.candidates.tolist())):
                order = torch.argsort(score_row, descending=True, stable=True).tolist()
                ranking = Ranking(self._recommendation(cand_row[j], score_row[j]) for j in order[: k or None])
                if answers is not None:
                    ranking.answer = answers[row]
                    named = {normalize(self.data.titles[i]): i for i in cand_row}.get(parse_answer(answers[row]))
                    ranking.named_item_id = self.data.item_raw[named] if named is not None else None
                out.append(ranking)
        return out[0] if single else out


def ranking_json(user: str, ranking: Ranking) -> str:
    """JSON lines of one ranking: one object per item (rank from 1), then the answer in generate mode."""
    lines = [json.dumps({"user": user, "rank": r, **rec.to_dict()}) for r, rec in enumerate(ranking, start=1)]
    if ranking.answer is not None:
        lines.append(json.dumps({"user": user, "answer": ranking.answer, "named_item_id": ranking.named_item_id}))
    return "\n".join(lines)
