"""Stage ``align_stage2``: A-LLMRec's projection of CF knowledge into a frozen LLM (reference section 4).

Per user the prompt names the last history titles and 20 candidate titles, each followed by a
placeholder that receives its projected joint item embedding ``F_I(e_i)``; ``F_U(x_u)`` takes the
user placeholder at the start. The LLM is trained (through the projectors only) to answer with the
next item's title. Evaluation runs on the frozen 1 + 19 candidates in two modes:

- ``score``: the mean log-probability of each candidate's answer text, a ranking of the 20
  (``test/hit@1``, ``test/ndcg@10``, ``test/mrr``...);
- ``generate``: greedy decoding; a hit when the first quoted span equals the target title after
  case/whitespace normalisation (``test/generate/hit@1``), plus the share of answers naming any
  candidate (``test/generate/valid_answer_rate``).

Baselines and variants on the same users and candidates: ``llm_only`` (the same prompt without
injected embeddings), ``text_items`` (item vectors from the stage-1 text path ``q_i`` instead of
``e_i``, the paper's A-LLMRec (SBERT) for cold items), ``backbone`` (the CF model's own scores),
and cold/warm splits of the target item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from aligners.collab_text import MLPAutoencoder
from aligners.llm import load_llm
from aligners.llm_ops import (
    IGNORE,
    answer_loss,
    embed_tokens,
    greedy_generate,
    pad,
    prompt_forward,
    score_continuations,
)
from aligners.llm_projector import LLMProjector, splice
from aligners.prompt import CANDIDATE_TOKEN, HISTORY_TOKEN, USER_TOKEN, PromptBuilder, normalize, parse_answer
from backbones.base import Backbone
from datamodules.batch import SeqBatch
from datamodules.cache import atomic_write_bytes
from datamodules.constants import PAD_ID
from datamodules.datamodule import SeqDataModule
from lightning_modules.align_stage1 import alignment_data
from lightning_modules.artifacts import check_run_dir, frozen_backbone, resolve_upstream
from lightning_modules.frozen import FrozenParts
from lightning_modules.training import begin_stage, device_for, finish, fit_and_test

VARIANTS = ("llm_only", "text_items")


@dataclass
class AlignStage2Config:
    """Optimisation and evaluation of ``align_stage2`` (the ``stage`` group)."""

    upstream_stage: ClassVar[str] = "align_stage1"
    groups: ClassVar[tuple[str, ...]] = ("llm", "prompt")

    name: str = "align_stage2"
    init_from: str = ""  # (str) the align_stage1 run directory; "" = <paths.runs>/<dataset>/align_stage1/<backbone>
    lr: float = 1e-4  # (float) Adam learning rate (paper Table 3)
    betas: tuple[float, float] = (0.9, 0.98)  # (float, float) Adam betas (official code)
    batch_size: int = 4  # (int) users per step (paper: 4)
    max_epochs: int = 5  # (int) paper: 5
    num_negatives: int = 19  # (int) training candidates besides the target, re-drawn every epoch
    validate: bool = True  # (bool) score-mode validation each epoch picks the checkpoint (the official code has none)
    monitor: str = "val/hit@1"  # (str) validation metric that picks the checkpoint to test
    eval_batch_size: int = 8  # (int) users per evaluation step
    max_train_users: int = 0  # (int) seeded subset of training users; 0 = all
    max_eval_users: int = 0  # (int) seeded subset of test (and validation) users; 0 = all
    variants: list[str] = field(default_factory=lambda: ["llm_only", "text_items"])  # (list) llm_only | text_items
    generate_variants: list[str] = field(default_factory=lambda: ["main", "llm_only"])  # (list) which run generate mode
    max_new_tokens: int = 48  # (int) generate mode: answer length cap (a title is cut to prompt.max_title_tokens)
    repetition_penalty: float = 1.0  # (float) generate mode; 1.5 = the official code (it corrupts titles, ref. 5.4)
    score_normalize: bool = True  # (bool) score mode: mean log-prob per token (else the sum)
    cold_item_max_count: int = 5  # (int) target items with at most this many training interactions are cold

    def __post_init__(self) -> None:
        if self.lr <= 0 or min(self.batch_size, self.eval_batch_size, self.num_negatives, self.max_new_tokens) < 1:
            raise ValueError("stage.lr must be > 0 and stage.batch_size, eval_batch_size, num_negatives, max_new_tokens >= 1")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"stage.variants: unknown {sorted(unknown)}; expected some of {list(VARIANTS)}")
        unknown = set(self.generate_variants) - {"main", *self.variants}
        if unknown:
            raise ValueError(f"stage.generate_variants: {sorted(unknown)} is neither 'main' nor in stage.variants")
        if self.repetition_penalty <= 0:
            raise ValueError(f"stage.repetition_penalty must be > 0, got {self.repetition_penalty}")


def _orders(users: Tensor, size: int, salt: int) -> Tensor:
    """A seeded permutation of ``size`` candidate columns per user ``[B, size]``: the same for every model."""
    rows = [np.random.default_rng([salt, int(u)]).permutation(size) for u in users.tolist()]
    return torch.as_tensor(np.stack(rows), dtype=torch.long, device=users.device)


def _split_cold_warm(out: dict[str, Any], prefix: str, scores: Tensor, cold: Tensor) -> None:
    """Step outputs that score the same rows again as ``<prefix>cold`` and ``<prefix>warm`` subsets."""
    out[f"scores/{prefix}cold"], out[f"mask/{prefix}cold"] = scores, cold
    out[f"scores/{prefix}warm"], out[f"mask/{prefix}warm"] = scores, ~cold


class LLMProjectionModule(FrozenParts, L.LightningModule):
    """Wires the frozen backbone, stage-1 item encoder and LLM to the trainable :class:`LLMProjector`.

    - ``item_latents [N+1, d']``: ``e_i`` of every item (frozen stage-1 encoder on the CF table).
    - ``text_latents [N+1, d']``: ``q_i`` of every item (stage-1 text path), for ``text_items``.
    - ``item_counts [N+1]``: training interactions per item (cold/warm split).
    """

    def __init__(
        self,
        backbone: Backbone,
        item_encoder: nn.Module,
        llm: nn.Module,
        prompts: PromptBuilder,
        cfg: AlignStage2Config,
        text_latents: Tensor | None,
        item_counts: Tensor,
        eval_seed: int = 2024,
        predictions_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.llm = llm.requires_grad_(False).eval()
        self.prompts = prompts
        self.cfg = cfg
        self.eval_seed = eval_seed
        self.predictions_path = Path(predictions_path) if predictions_path else None
        with torch.no_grad():
            item_encoder = item_encoder.eval()
            latents = item_encoder(backbone.item_embeddings().detach().float())
        self.projector = LLMProjector(backbone.hidden_dim, latents.shape[1], llm.get_input_embeddings().embedding_dim)
        self.register_buffer("item_latents", latents, persistent=False)
        self.register_buffer("text_latents", text_latents, persistent=False)
        self.register_buffer("cold_items", item_counts <= cfg.cold_item_max_count, persistent=False)
        ids = [prompts.placeholder_ids[t] for t in (USER_TOKEN, HISTORY_TOKEN, CANDIDATE_TOKEN)]
        self.register_buffer("placeholder_ids", torch.tensor(ids), persistent=False)
        vocab = llm.get_output_embeddings().weight.shape[0]
        self.register_buffer("quote_counts", torch.tensor(prompts.quote_counts(vocab)), persistent=False)
        self.pad_id = prompts.eos_id
        self.strict_loading = False  # checkpoints hold the projectors only
        self.frozen = ("backbone", "llm")
        if "text_items" in cfg.variants and text_latents is None:
            raise ValueError("stage.variants has text_items but the align_stage1 run has no text_latents.pt")
        self.val_ranking_sets: tuple[str, ...] = ()
        variants = tuple(cfg.variants)
        splits = ("cold", "warm")
        self.test_ranking_sets = (
            variants + ("backbone",) + splits + tuple(f"{v}/{s}" for v in variants + ("backbone",) for s in splits)
        )
        self.test_rate_names = tuple(
            f"{'' if v == 'main' else v + '/'}generate/{m}" for v in cfg.generate_variants for m in ("hit@1", "valid_answer_rate")
        )
        self.records: list[dict[str, Any]] = []
        self.epoch_tokens = 0  # this rank's training tokens in the current epoch

    full_ranking_val = False
    full_ranking_test = False

    # ----- prompt assembly -------------------------------------------------------------------

    @staticmethod
    def _histories(item_seq: Tensor) -> list[list[int]]:
        return [[i for i in row if i != PAD_ID] for row in item_seq.tolist()]

    def _embed(
        self, seqs: list[list[int]], left: bool, user: Tensor | None, history: Tensor | None, candidates: Tensor | None, table: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Token embeddings of ``seqs`` with the projected vectors spliced in -> ``(embeds [B, L, H], mask [B, L])``."""
        ids, mask = pad(seqs, self.pad_id, left=left)
        ids, mask = ids.to(self.device), mask.to(self.device)
        embeds = embed_tokens(self.llm, ids, self.placeholder_ids)
        if user is None:
            return embeds, mask
        user_id, hist_id, cand_id = self.placeholder_ids.tolist()
        ones = torch.ones(len(seqs), dtype=torch.long, device=self.device)
        embeds = splice(embeds, ids, user_id, self.projector.project_user(user).unsqueeze(1), ones)
        hist_counts = (history != PAD_ID).sum(1)
        hist_vecs = self.projector.project_items(table[history])
        # Left-padded histories: move each row's real items to the front, as splice expects.
        order = torch.argsort((history == PAD_ID).long(), dim=1, stable=True)
        hist_vecs = hist_vecs.gather(1, order.unsqueeze(-1).expand_as(hist_vecs))
        embeds = splice(embeds, ids, hist_id, hist_vecs, hist_counts)
        cand_counts = torch.full_like(ones, candidates.shape[1])
        return splice(embeds, ids, cand_id, self.projector.project_items(table[candidates]), cand_counts), mask

    def _recent(self, item_seq: Tensor) -> Tensor:
        return item_seq[:, -self.prompts.cfg.num_history :]

    # ----- training ----------------------------------------------------------------------------

    def training_step(self, batch: SeqBatch, batch_idx: int) -> Tensor:
        candidates = torch.cat([batch.pos_items.unsqueeze(1), batch.neg_items], dim=1)
        order = _orders(batch.user_ids, candidates.shape[1], salt=self.current_epoch + 1)
        candidates = candidates.gather(1, order)
        history = self._recent(batch.item_seq)
        with torch.no_grad():
            user = self.backbone.encode_user(batch).float()
        prompts = self.prompts.prompts(self._histories(history), candidates.tolist())
        answers = self.prompts.answers(batch.pos_items.tolist())
        seqs = [p + a for p, a in zip(prompts, answers)]
        embeds, mask = self._embed(seqs, False, user, history, candidates, self.item_latents)
        labels = torch.full(mask.shape, IGNORE, dtype=torch.long, device=self.device)
        for row, (p, a) in enumerate(zip(prompts, answers)):
            labels[row, len(p) : len(p) + len(a)] = torch.tensor(a, device=self.device)
        loss = answer_loss(self.llm, embeds, mask, labels)
        self.last_tokens = int(mask.sum())  # prompt + answer tokens of this step (benchmarks read it)
        self.epoch_tokens += self.last_tokens
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/tokens", float(self.last_tokens), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=len(batch))
        return loss

    # ----- evaluation --------------------------------------------------------------------------

    def _evaluate(
        self, batch: SeqBatch, ordered: Tensor, variant: str, user: Tensor, score: bool, generate: bool
    ) -> tuple[Tensor | None, list[str] | None]:
        """One prompt pass for ``variant`` (main | llm_only | text_items): candidate scores in prompt order, answers."""
        history = self._recent(batch.item_seq)
        with_emb = variant != "llm_only"
        table = self.text_latents if variant == "text_items" else self.item_latents
        prompts = self.prompts.prompts(self._histories(history), ordered.tolist(), with_embeddings=with_emb)
        embeds, mask = self._embed(prompts, True, user if with_emb else None, history, ordered, table)
        next_logits, cache = prompt_forward(self.llm, embeds, mask)
        scores = answers = None
        if score:
            continuations = [self.prompts.answers(row) for row in ordered.tolist()]
            scores = score_continuations(
                self.llm, cache, mask, next_logits, continuations, self.pad_id, normalize=self.cfg.score_normalize
            )
        if generate:
            new = greedy_generate(
                self.llm, cache, mask, next_logits, self.cfg.max_new_tokens, self.prompts.eos_id,
                self.quote_counts, self.cfg.repetition_penalty,
            )
            answers = self.prompts.tokenizer.batch_decode(new, skip_special_tokens=True)
        return scores, answers

    def prompt_order(self, batch: SeqBatch) -> Tensor:
        """The seeded order ``[B, C]`` in which each user's candidates appear in the prompt (the same for every model)."""
        return _orders(batch.user_ids, batch.candidates.shape[1], salt=self.eval_seed)

    @torch.no_grad()
    def answer(self, batch: SeqBatch, variant: str = "main", generate: bool = False) -> tuple[Tensor, list[str] | None]:
        """Score-mode scores ``[B, C]`` of ``batch.candidates`` in their column order and, with ``generate``,
        the greedy answers: what evaluation computes for ``variant`` (main | llm_only | text_items)."""
        order = self.prompt_order(batch)
        user = self.backbone.encode_user(batch).float()
        scores, answers = self._evaluate(batch, batch.candidates.gather(1, order), variant, user, score=True, generate=generate)
        return torch.empty_like(scores).scatter_(1, order, scores), answers  # back from prompt order

    @torch.no_grad()
    def _eval_step(self, batch: SeqBatch, test: bool) -> dict[str, Any]:
        candidates = batch.candidates  # [B, C], target in column 0
        ordered = candidates.gather(1, self.prompt_order(batch))
        variants = ("main",) + (tuple(self.cfg.variants) if test else ())
        out: dict[str, Any] = {}
        titles = self.prompts.titles
        cold = self.cold_items[candidates[:, 0]]
        records = [{"user": int(u), "candidates": row} for u, row in zip(batch.user_ids.tolist(), ordered.tolist())]
        for variant in variants:
            generate = test and variant in self.cfg.generate_variants
            scores, answers = self.answer(batch, variant, generate=generate)
            prefix = "" if variant == "main" else f"{variant}/"
            out["scores" if variant == "main" else f"scores/{variant}"] = scores
            if test:
                _split_cold_warm(out, prefix, scores, cold)
            for rec, row in zip(records, scores.tolist()):
                rec[f"{prefix}scores"] = [round(s, 4) for s in row]
            if answers is not None:
                parsed = [parse_answer(a) for a in answers]
                target = [normalize(titles[i]) for i in candidates[:, 0].tolist()]
                named = [p in {normalize(titles[i]) for i in row} for p, row in zip(parsed, candidates.tolist())]
                hits = torch.tensor([p == t for p, t in zip(parsed, target)], device=self.device)
                out[f"rate/{prefix}generate/hit@1"] = hits
                out[f"rate/{prefix}generate/valid_answer_rate"] = torch.tensor(named, device=self.device)
                for rec, answer, hit in zip(records, answers, hits.tolist()):
                    rec[f"{prefix}answer"], rec[f"{prefix}hit"] = answer, hit
        if test:
            backbone = self.backbone.score(batch, candidates).float()
            out["scores/backbone"] = backbone
            _split_cold_warm(out, "backbone/", backbone, cold)
            self.records.extend(records)
        return out

    def validation_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, test=False)

    def test_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, test=True)

    def on_train_epoch_start(self) -> None:
        self.epoch_tokens = 0

    def on_test_epoch_start(self) -> None:
        self.records = []

    def on_test_epoch_end(self) -> None:
        """Every test user's prompt order, scores and answers as JSON lines (rank 0 gathers all ranks)."""
        records = self.records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if self.predictions_path is not None and self.trainer.is_global_zero:
            unique = {r["user"]: r for r in records}  # sharding never duplicates; this guards it
            lines = "".join(json.dumps(unique[u]) + "\n" for u in sorted(unique))
            atomic_write_bytes(self.predictions_path, lambda fh: fh.write(lines.encode()))
        self.records = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if not k.startswith("projector.")]:
            del state[key]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.projector.parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas))


def build_align_stage2(cfg: Any, device: str | torch.device = "cpu") -> tuple[SeqDataModule, LLMProjectionModule]:
    """Data (last-item examples with 19 negatives), the frozen backbone, stage-1 encoder and LLM, and the projectors."""
    s = cfg.stage
    stage1_dir = resolve_upstream(cfg)
    datamodule = alignment_data(cfg, s, num_negatives=s.num_negatives)
    data = datamodule.data
    saved1 = check_run_dir(stage1_dir, "align_stage1", cfg, data.num_items)
    backbone = frozen_backbone(cfg, Path(saved1["stage"]["init_from"]), data)
    # Stage 2 reads only the stage-1 item autoencoder's encoder (e_i); the text path comes as text_latents.pt.
    item_ae = MLPAutoencoder(backbone.hidden_dim, saved1["stage"]["latent_dim"])
    state = torch.load(stage1_dir / "weights.pt", map_location="cpu", weights_only=True)["aligner"]
    item_ae.load_state_dict({k.removeprefix("item_ae."): v for k, v in state.items() if k.startswith("item_ae.")})
    text_latents = None
    if (stage1_dir / "text_latents.pt").is_file():
        text_latents = torch.load(stage1_dir / "text_latents.pt", map_location="cpu", weights_only=True)["text_latents"]
    llm, tokenizer = load_llm(cfg.llm, device)
    prompts = PromptBuilder(tokenizer, cfg.prompt, data.titles)
    counts = torch.bincount(data.train_interactions()[:, 1], minlength=data.num_items + 1)
    module = LLMProjectionModule(
        backbone, item_ae.encoder, llm, prompts, s, text_latents, counts,
        eval_seed=cfg.data.eval_seed, predictions_path=cfg.run_dir / "predictions.jsonl",
    )
    return datamodule, module


def run_align_stage2(cfg: Any) -> dict[str, Any]:
    """Stage 2: train the projectors, then evaluate A-LLMRec, its variants and baselines on the frozen candidates."""
    start = begin_stage(cfg)
    if start.finished is not None:
        return start.finished
    datamodule, module = build_align_stage2(cfg, device_for(cfg))
    s = cfg.stage
    trainer, metrics = fit_and_test(cfg, module, datamodule, start, s.monitor, 0, s.max_epochs, validate=s.validate)
    metrics["llm"] = cfg.llm.name
    metrics["num_trained_parameters"] = sum(p.numel() for p in module.projector.parameters())
    metrics["num_train_users"] = len(datamodule.train_data)
    metrics["num_test_users"] = sum(1 for _ in open(cfg.run_dir / "predictions.jsonl")) if trainer.is_global_zero else None
    if metrics.get("seconds_per_epoch"):
        metrics["train_samples_per_second"] = round(len(datamodule.train_data) / metrics["seconds_per_epoch"], 3)
        # the last epoch's tokens over the mean epoch time: exact for the usual single or equal epochs
        metrics["train_tokens_per_second"] = round(module.epoch_tokens * trainer.world_size / metrics["seconds_per_epoch"], 1)
    if metrics.get("test_seconds") and metrics["num_test_users"]:
        metrics["test_users_per_second"] = round(metrics["num_test_users"] / metrics["test_seconds"], 4)
    return finish(cfg, trainer, metrics, {"projector": module.projector.state_dict()}, datamodule.data)
