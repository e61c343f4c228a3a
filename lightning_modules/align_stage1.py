"""Stage ``align_stage1``: A-LLMRec's collaborative-text alignment (reference section 3).

The CF backbone is frozen (eval mode: the official code leaves its dropout on, see the config);
the text encoder is fine-tuned (the paper) or frozen (its embeddings are then computed once);
only the two autoencoders (+ the text encoder when fine-tuned) reach the optimiser. Validation and
test score the frozen candidates with the user against the reconstructed item embedding, the
stage's own recommendation head, so checkpoint selection has a signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from aligners.collab_text import CollabTextAligner
from aligners.text_encoder import item_text, load_text_encoder
from backbones.base import Backbone
from callbacks.artifacts import write_weights
from datamodules.batch import SeqBatch
from datamodules.datamodule import SeqDataModule
from datamodules.sources import DataFormatError
from lightning_modules.artifacts import frozen_backbone, resolve_upstream
from lightning_modules.frozen import FrozenParts
from lightning_modules.training import begin_stage, finish, fit_and_test, require_titles


@dataclass
class AlignStage1Config:
    """Optimisation of ``align_stage1`` (the ``stage`` group)."""

    upstream_stage: ClassVar[str] = "cf_pretrain"
    groups: ClassVar[tuple[str, ...]] = ("text_encoder",)

    name: str = "align_stage1"
    init_from: str = ""  # (str) the cf_pretrain run directory; "" = <paths.runs>/<dataset>/cf_pretrain/<backbone>
    lr: float = 1e-4  # (float) Adam learning rate (paper Table 3)
    betas: tuple[float, float] = (0.9, 0.98)  # (float, float) Adam betas (official code)
    batch_size: int = 32  # (int) users per step (paper)
    max_epochs: int = 10  # (int) paper: 10
    patience: int = 0  # (int) epochs without a better monitor value before stopping; 0 = never
    monitor: str = "val/ndcg@10"  # (str) validation metric that picks the checkpoint to test
    latent_dim: int = 128  # (int) d', the shared latent width (paper)
    item_recon_weight: float = 0.5  # (float) alpha (paper: 0.5 everywhere)
    text_recon_weight: float = 0.2  # (float) beta (paper: 0.2 Beauty/Toys, 0.5 Movies/Games)
    rec_score: str = "mean"  # (str) mean = dot / D (official code) | dot (paper formula)
    train_text_encoder: bool = True  # (bool) fine-tune the text encoder (paper) or keep it frozen
    max_train_users: int = 0  # (int) seeded subset of training users; 0 = all
    max_eval_users: int = 0  # (int) seeded subset of validation/test users; 0 = all

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 0 or self.latent_dim < 1:
            raise ValueError(
                "stage.lr must be > 0, stage.batch_size and stage.latent_dim >= 1, stage.max_epochs >= 0; got "
                f"{self.lr}, {self.batch_size}, {self.latent_dim}, {self.max_epochs}"
            )
        if self.rec_score not in ("mean", "dot"):
            raise ValueError(f"stage.rec_score must be mean or dot, got {self.rec_score!r}")
        if min(self.item_recon_weight, self.text_recon_weight) < 0:
            raise ValueError("stage.item_recon_weight and stage.text_recon_weight must be >= 0")


class CollabTextAlignModule(FrozenParts, L.LightningModule):
    """Wires the frozen backbone, the text encoder and :class:`CollabTextAligner`.

    ``item_texts[i]`` is item i's text (index 0 = padding). With a frozen encoder the text table
    ``[N+1, T]`` is computed once here; with a trained one, texts are encoded every step.
    """

    def __init__(
        self,
        backbone: Backbone,
        text_encoder: nn.Module,
        aligner: CollabTextAligner,
        item_texts: list[str],
        cfg: AlignStage1Config,
        text_batch_size: int = 128,
    ) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(cfg.train_text_encoder)
        if not cfg.train_text_encoder:
            self.text_encoder.eval()
        self.aligner = aligner
        self.item_texts = item_texts
        self.cfg = cfg
        self.text_batch_size = text_batch_size
        # Frozen parts are not saved: the checkpoint holds what this stage trains.
        self.strict_loading = False
        self.frozen = ("backbone",) + (() if cfg.train_text_encoder else ("text_encoder",))
        table = None
        if not cfg.train_text_encoder:
            table = text_encoder.encode(item_texts, text_batch_size, progress=True, desc="text embeddings")
        self.register_buffer("text_table", table, persistent=False)

    def _texts(self, items: Tensor) -> Tensor:
        if self.text_table is not None:
            return self.text_table[items]
        flat = items.flatten().tolist()
        return self.text_encoder([self.item_texts[i] for i in flat]).float().view(*items.shape, -1)

    def training_step(self, batch: SeqBatch, batch_idx: int) -> Tensor:
        with torch.no_grad():
            user = self.backbone.encode_user(batch)
            pos, neg = batch.pos_items, batch.neg_items[:, 0]
            pos_emb, neg_emb = self.backbone.item_embeddings(pos), self.backbone.item_embeddings(neg)
        texts = self._texts(torch.stack([pos, neg], dim=1))
        losses = self.aligner.losses(user, pos_emb, neg_emb, texts[:, 0], texts[:, 1])
        size = len(batch)
        self.log("train/loss", losses.total, prog_bar=True, batch_size=size)
        for name in ("rec", "matching", "item_recon", "text_recon"):
            self.log(f"train/loss_{name}", getattr(losses, name), batch_size=size)
        return losses.total

    def validation_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Tensor]:
        user = self.backbone.encode_user(batch)
        return {"scores": self.aligner.scores(user, self.backbone.item_embeddings(batch.candidates))}

    test_ranking_sets = ("backbone",)

    def test_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Tensor]:
        out = self.validation_step(batch, batch_idx)
        out["scores/backbone"] = self.backbone.score(batch, batch.candidates)
        return out

    full_ranking_val = False
    full_ranking_test = False

    def trained_state(self) -> dict[str, Any]:
        """What ``weights.pt`` holds: the aligner, and the text encoder when it was fine-tuned."""
        state: dict[str, Any] = {"aligner": self.aligner.state_dict()}
        if self.cfg.train_text_encoder:
            state["text_encoder"] = self.text_encoder.state_dict()
        return state

    @torch.no_grad()
    def text_latents(self) -> Tensor:
        """``[N+1, d']``: every item's latent reached from its text alone (the cold-item path of stage 2)."""
        table = self.text_table
        if table is None:
            table = self.text_encoder.encode(self.item_texts, self.text_batch_size, progress=True, desc="text embeddings")
        return self.aligner.text_latent(table.to(self.device)).float().cpu()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.cfg.lr, betas=tuple(self.cfg.betas))


def alignment_data(cfg: Any, stage_cfg: Any, num_negatives: int) -> SeqDataModule:
    """A-LLMRec's data for both stages: one last-item example per (seeded subset of) training users,
    ``num_negatives`` each, and validation/test users with their frozen candidates."""
    datamodule = SeqDataModule(
        cfg.data,
        input_kind="last_item",
        num_negatives=num_negatives,
        seed=cfg.seed,
        batch_size=stage_cfg.batch_size,
        eval_batch_size=getattr(stage_cfg, "eval_batch_size", None),
        max_train_users=stage_cfg.max_train_users,
        max_eval_users=stage_cfg.max_eval_users,
        max_val_users=getattr(stage_cfg, "max_val_users", -1),
    )
    datamodule.prepare_data()
    datamodule.setup()
    require_titles(cfg, datamodule.data, "A-LLMRec aligns item embeddings with item text")
    if not datamodule.data.has_candidates:
        raise DataFormatError(
            f"data={cfg.data.name} (source {cfg.data.source}) has no sampled evaluation candidates; A-LLMRec picks "
            "the next item among them. Use an Amazon or prepared dataset (rlmrec data is for cf_pretrain and FACE's full ranking)"
        )
    return datamodule


def build_align_stage1(cfg: Any) -> tuple[SeqDataModule, CollabTextAlignModule]:
    """Data (one last-item example per user, one negative) and the stage-1 module on a frozen backbone."""
    cf_dir = resolve_upstream(cfg)
    datamodule = alignment_data(cfg, cfg.stage, num_negatives=1)
    data = datamodule.data
    backbone = frozen_backbone(cfg, cf_dir, data)
    text_encoder = load_text_encoder(cfg.text_encoder)
    s = cfg.stage
    aligner = CollabTextAligner(
        backbone.hidden_dim, text_encoder.dim, s.latent_dim, s.item_recon_weight, s.text_recon_weight, s.rec_score
    )
    texts = [item_text(t, d) for t, d in zip(data.titles, data.descriptions)]
    module = CollabTextAlignModule(backbone, text_encoder, aligner, texts, s, cfg.text_encoder.batch_size)
    return datamodule, module


def run_align_stage1(cfg: Any) -> dict[str, Any]:
    """Stage 1; also writes ``text_latents.pt`` ([N+1, d'] text-path item latents) for stage 2's cold-item variant."""
    start = begin_stage(cfg)
    if start.finished is not None:
        return start.finished
    datamodule, module = build_align_stage1(cfg)
    s = cfg.stage
    trainer, metrics = fit_and_test(cfg, module, datamodule, start, s.monitor, s.patience, s.max_epochs)
    if trainer.is_global_zero:
        write_weights(cfg.run_dir / "text_latents.pt", {"text_latents": module.text_latents()})
    metrics["num_trained_parameters"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return finish(cfg, trainer, metrics, module.trained_state(), datamodule.data)
