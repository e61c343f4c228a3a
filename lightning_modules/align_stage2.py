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

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from aligners.collab_text import MLPAutoencoder
from aligners.llm import load_llm
from aligners.llm_ops import (
    IGNORE,
    answer_loss,
    choice_loss,
    embed_tokens,
    greedy_generate,
    pad,
    prompt_forward,
    score_continuations,
)
from aligners.llm_projector import LLMProjector, splice
from aligners.prompt import CANDIDATE_TOKEN, HISTORY_TOKEN, USER_TOKEN, PromptBuilder, normalize, parse_answer
from backbones.base import Backbone
from callbacks.ranking import sampled_ranks
from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID
from datamodules.datamodule import SeqDataModule
from lightning_modules.align_stage1 import alignment_data
from lightning_modules.align_stage2_config import AlignStage2Config
from lightning_modules.artifacts import check_run_dir, frozen_backbone, resolve_upstream
from lightning_modules.frozen import FrozenParts
from lightning_modules.stage2_eval import (
    SPLITS,
    derangements,
    hit1_intervals,
    paper_cold_warm,
    prompt_orders,
    split_cold_warm,
    training_user_vectors,
    write_predictions,
)
from lightning_modules.training import begin_stage, device_for, finish, fit_and_test


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
        tokens = llm.get_input_embeddings().weight
        token_norm = float(tokens.detach().float().norm(dim=-1).mean()) if cfg.token_norm else 0.0
        self.projector = LLMProjector(
            backbone.hidden_dim, latents.shape[1], tokens.shape[1], cfg.standardize_inputs, token_norm
        )
        self.register_buffer("item_latents", latents, persistent=False)
        self.register_buffer("text_latents", text_latents, persistent=False)
        self.register_buffer("cold_items", item_counts <= cfg.cold_item_max_count, persistent=False)
        paper_cold, paper_warm = paper_cold_warm(item_counts, cfg.cold_share)
        self.register_buffer("paper_cold_items", paper_cold, persistent=False)
        self.register_buffer("paper_warm_items", paper_warm, persistent=False)
        ids = [prompts.placeholder_ids[t] for t in (USER_TOKEN, HISTORY_TOKEN, CANDIDATE_TOKEN)]
        self.register_buffer("placeholder_ids", torch.tensor(ids), persistent=False)
        self.candidate_token = ids[2]  # also an answer's {emb} (prompt.answer)
        vocab = llm.get_output_embeddings().weight.shape[0]
        self.register_buffer("quote_counts", torch.tensor(prompts.quote_counts(vocab)), persistent=False)
        self.pad_id = prompts.eos_id
        self.strict_loading = False  # checkpoints hold the projectors only
        self.frozen = ("backbone", "llm")
        if "text_items" in cfg.variants and text_latents is None:
            raise ValueError("stage.variants has text_items but the align_stage1 run has no text_latents.pt")
        self.val_ranking_sets: tuple[str, ...] = ()
        variants = tuple(cfg.variants)
        self.test_ranking_sets = (
            variants + ("backbone",) + SPLITS + tuple(f"{v}/{s}" for v in variants + ("backbone",) for s in SPLITS)
        )
        self.test_rate_names = tuple(
            f"{'' if v == 'main' else v + '/'}generate/{m}" for v in cfg.generate_variants for m in ("hit@1", "valid_answer_rate")
        )
        self.records: list[dict[str, Any]] = []
        self.epoch_tokens = 0  # this rank's training tokens in the current epoch
        self.epoch_samples = 0  # and its training examples (trainer.limit_train_batches may cut an epoch short)

    full_ranking_val = False
    full_ranking_test = False

    # ----- prompt assembly -------------------------------------------------------------------

    @staticmethod
    def _histories(item_seq: Tensor) -> list[list[int]]:
        return [[i for i in row if i != PAD_ID] for row in item_seq.tolist()]

    def _embed(
        self, seqs: list[list[int]], left: bool, user: Tensor | None, history: Tensor | None, candidates: Tensor | None, table: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Token embeddings of ``seqs`` with the projected vectors spliced in -> ``(embeds [B, L, H], mask [B, L])``;
        ``candidates [B, C]`` are the items whose vectors fill the candidate placeholders, in order."""
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
        order = prompt_orders(batch.user_ids, candidates.shape[1], salt=self.current_epoch + 1)
        candidates = candidates.gather(1, order)
        history = self._recent(batch.item_seq)
        with torch.no_grad():
            user = self.backbone.encode_user(batch).float()
        prompts = self.prompts.prompts(self._histories(history), candidates.tolist())
        if self.cfg.objective == "generate":
            loss, tokens = self._generate_loss(batch, prompts, user, history, candidates)
        else:
            loss, tokens = self._choice_loss(prompts, user, history, candidates, target=(order == 0).long().argmax(1))
        self.last_tokens = tokens  # prompt + answer tokens of this step (benchmarks read it)
        self.epoch_tokens += self.last_tokens
        self.epoch_samples += len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/tokens", float(self.last_tokens), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=len(batch))
        return loss

    def _generate_loss(
        self, batch: SeqBatch, prompts: list[list[int]], user: Tensor, history: Tensor, candidates: Tensor
    ) -> tuple[Tensor, int]:
        """The paper's objective: cross-entropy of the next item's answer tokens after the prompt."""
        answers = self.prompts.answers(batch.pos_items.tolist())
        seqs = [p + a for p, a in zip(prompts, answers)]
        embeds, mask = self._embed(seqs, False, user, history, candidates, self.item_latents)
        labels = torch.full(mask.shape, IGNORE, dtype=torch.long, device=self.device)
        for row, (p, a) in enumerate(zip(prompts, answers)):
            labels[row, len(p) : len(p) + len(a)] = torch.tensor(a, device=self.device)
        return answer_loss(self.llm, embeds, mask, labels), int(mask.sum())

    def _choice_loss(
        self, prompts: list[list[int]], user: Tensor, history: Tensor, candidates: Tensor, target: Tensor
    ) -> tuple[Tensor, int]:
        """The ``choice`` / ``both`` objectives (:func:`choice_loss`) on the prompts with their vectors."""
        embeds, mask = self._embed(prompts, True, user, history, candidates, self.item_latents)
        answers, vectors = self._answers(candidates, True, candidates, self.item_latents)
        s = self.cfg
        weight = s.generate_weight if s.objective == "both" else 0.0
        return choice_loss(
            self.llm, embeds, mask, answers, target, self.pad_id, s.score_reduction, s.score_first_k, weight,
            vectors, self.candidate_token,
        )

    def _answers(self, ordered: Tensor, with_emb: bool, vectors: Tensor, table: Tensor) -> tuple[list[list[list[int]]], Tensor | None]:
        """Each candidate's answer ids ``[B][C]`` and, when ``prompt.answer`` has an ``{emb}``, the projected
        vectors ``[B, C, H]`` that fill it (of ``vectors``' items from ``table``: the shuffled control's
        permuted ones, or the text path's)."""
        with_emb = with_emb and self.prompts.answer_has_embedding
        answers = [self.prompts.answers(row, with_emb) for row in ordered.tolist()]
        return answers, (self.projector.project_items(table[vectors]) if with_emb else None)

    # ----- evaluation --------------------------------------------------------------------------

    def _evaluate(
        self, batch: SeqBatch, ordered: Tensor, variant: str, user: Tensor, score: bool, generate: bool
    ) -> tuple[Tensor | None, list[str] | None]:
        """One prompt pass for ``variant`` (main | llm_only | shuffled | text_items): candidate scores in prompt
        order, answers. ``shuffled`` keeps every title in place and permutes the candidate vectors among the
        user's candidates (a seeded derangement): if the LLM reads the vectors, its choice must suffer."""
        history = self._recent(batch.item_seq)
        with_emb = variant != "llm_only"
        table = self.text_latents if variant == "text_items" else self.item_latents
        vectors = ordered
        if variant == "shuffled":
            vectors = ordered.gather(1, derangements(batch.user_ids, ordered.shape[1], salt=self.eval_seed))
        prompts = self.prompts.prompts(self._histories(history), ordered.tolist(), with_embeddings=with_emb)
        embeds, mask = self._embed(prompts, True, user if with_emb else None, history, vectors, table)
        next_logits, cache = prompt_forward(self.llm, embeds, mask)
        scores = answers = None
        if score:
            continuations, answer_vectors = self._answers(ordered, with_emb, vectors, table)
            scores = score_continuations(
                self.llm, cache, mask, next_logits, continuations, self.pad_id, self.cfg.score_reduction, self.cfg.score_first_k,
                answer_vectors, self.candidate_token,
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
        return prompt_orders(batch.user_ids, batch.candidates.shape[1], salt=self.eval_seed)

    @torch.no_grad()
    def answer(
        self, batch: SeqBatch, variant: str = "main", generate: bool = False, order: Tensor | None = None, user: Tensor | None = None
    ) -> tuple[Tensor, list[str] | None]:
        """Score-mode scores ``[B, C]`` of ``batch.candidates`` in their column order and, with ``generate``,
        the greedy answers: what evaluation computes for ``variant`` (main | llm_only | shuffled | text_items).
        ``order`` (:meth:`prompt_order`) and ``user`` (the CF user vectors) are computed when not given."""
        order = self.prompt_order(batch) if order is None else order
        user = self.backbone.encode_user(batch).float() if user is None else user
        scores, answers = self._evaluate(batch, batch.candidates.gather(1, order), variant, user, score=True, generate=generate)
        return torch.empty_like(scores).scatter_(1, order, scores), answers  # back from prompt order

    @torch.no_grad()
    def _eval_step(self, batch: SeqBatch, test: bool) -> dict[str, Any]:
        candidates = batch.candidates  # [B, C], target in column 0
        order = self.prompt_order(batch)  # once per batch: every variant shares the order and the user vectors
        user = self.backbone.encode_user(batch).float()
        ordered = candidates.gather(1, order)
        variants = ("main",) + (tuple(self.cfg.variants) if test else ())
        out: dict[str, Any] = {}
        titles = self.prompts.titles
        target = candidates[:, 0]
        masks = (self.cold_items[target], ~self.cold_items[target], self.paper_cold_items[target], self.paper_warm_items[target])
        splits = dict(zip(SPLITS, masks))
        records = [
            {"user": int(u), "target": int(t), "candidates": row}
            for u, t, row in zip(batch.user_ids.tolist(), target.tolist(), ordered.tolist())
        ]
        for variant in variants:
            generate = test and variant in self.cfg.generate_variants
            scores, answers = self.answer(batch, variant, generate, order, user)
            prefix = "" if variant == "main" else f"{variant}/"
            out["scores" if variant == "main" else f"scores/{variant}"] = scores
            if test:
                split_cold_warm(out, prefix, scores, splits)
            for rec, row, rank in zip(records, scores.tolist(), sampled_ranks(scores).tolist()):
                rec[f"{prefix}scores"], rec[f"{prefix}rank"] = [round(s, 4) for s in row], rank
            if answers is not None:
                parsed = [parse_answer(a) for a in answers]
                wanted = [normalize(titles[i]) for i in target.tolist()]
                named = [p in {normalize(titles[i]) for i in row} for p, row in zip(parsed, candidates.tolist())]
                hits = torch.tensor([p == t for p, t in zip(parsed, wanted)], device=self.device)
                out[f"rate/{prefix}generate/hit@1"] = hits
                out[f"rate/{prefix}generate/valid_answer_rate"] = torch.tensor(named, device=self.device)
                for rec, answer, hit in zip(records, answers, hits.tolist()):
                    rec[f"{prefix}answer"], rec[f"{prefix}hit"] = answer, hit
        if test:
            backbone = self.backbone.score(batch, candidates).float()
            out["scores/backbone"] = backbone
            split_cold_warm(out, "backbone/", backbone, splits)
            for rec, rank in zip(records, sampled_ranks(backbone).tolist()):
                rec["backbone/rank"] = rank
            self.records.extend(records)
        return out

    def validation_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, test=False)

    def test_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, test=True)

    def on_train_epoch_start(self) -> None:
        self.epoch_tokens = 0
        self.epoch_samples = 0

    def on_test_epoch_start(self) -> None:
        self.records = []

    def on_test_epoch_end(self) -> None:
        """Every test user's prompt order, scores, ranks and answers as JSON lines (rank 0 gathers all ranks)."""
        write_predictions(self.records, self.predictions_path if self.trainer.is_global_zero else None)
        self.records = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if not k.startswith("projector.")]:
            del state[key]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.projector.parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas))
        if not self.cfg.warmup_steps:
            return optimizer
        warmup = self.cfg.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


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
    if s.standardize_inputs:
        module.projector.fit_input_stats(training_user_vectors(backbone, datamodule), module.item_latents[1:])
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
        # the last epoch's examples and tokens over the mean epoch time: exact for the usual equal epochs
        metrics["train_samples_per_second"] = round(module.epoch_samples * trainer.world_size / metrics["seconds_per_epoch"], 3)
        metrics["train_tokens_per_second"] = round(module.epoch_tokens * trainer.world_size / metrics["seconds_per_epoch"], 1)
    if trainer.is_global_zero:
        metrics.update(hit1_intervals(cfg.run_dir / "predictions.jsonl", s))
    if metrics.get("test_seconds") and metrics["num_test_users"]:
        metrics["test_users_per_second"] = round(metrics["num_test_users"] / metrics["test_seconds"], 4)
    return finish(cfg, trainer, metrics, {"projector": module.projector.state_dict()}, datamodule.data)
