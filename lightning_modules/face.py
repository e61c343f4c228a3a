"""Stage ``face``: FACE (Wang et al., NeurIPS 2025) on a pretrained CF backbone.

Every step adds FACE's losses to the backbone's own loss (reference ``face.md`` section 4):

    L = L_backbone + vq_weight * L_Q + recons_weight * L_rec
        + align_weight * L_align + word_align_weight * L_word

over the step's entities: the batch's first ``entities_per_step`` users, their positive items and
as many uniformly random items (the official code's users, positives and negatives).

- ``L_align`` (official): the descriptor words in a prompt, read by the frozen text encoder, InfoNCE
  against the entities' text. The encoder reads the first ``encoder_entities_per_step`` users with
  their two items (it is most of a step's cost).
- ``L_word`` (not in the official code; ``word_align_weight=0`` turns it off): the same InfoNCE with
  the descriptor sentence approximated by the sum of its words' own text embeddings, relaxed over
  each slot's nearest words, on every entity of the step, items against items and users against
  users (``word_align_by_type``). Its gradient reaches the concepts and the
  codebook map through the soft word choice; the official loss's only reaches them straight
  through the encoder's input embeddings, and alone left the descriptors at chance on Beauty.
  With it, ``- word_diversity_weight * H``: the normalised entropy of the soft word choice
  averaged over the step (wav2vec 2.0's diversity loss), which keeps the entities' concepts from
  drifting onto one shared cluster of words.

The backbone keeps training at ``backbone_lr`` (the official lr / 10) and receives FACE's gradients
through its embeddings. The first ``map_epochs`` epochs are the map phase (no alignment terms), the
rest the align phase. Recommendation still uses the backbone's own embeddings; the descriptors are a
by-product for reading and for LLMs.

Test outputs: the trained backbone (``test/*``) and, on the same users and candidates, the
backbone as it came from ``cf_pretrain`` (``test/backbone/*``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from aligners.descriptor_text import (
    DescriptorBridge,
    DescriptorTextEncoder,
    info_nce,
    relaxed_word_text,
    shared_word_vocabulary,
    word_usage_entropy,
)
from aligners.llm import load_token_embeddings
from aligners.text_encoder import item_text, load_text_encoder
from aligners.vq_descriptor import PARTS_OF_SPEECH, VQDescriptorMapper
from backbones import BACKBONES
from backbones.base import Backbone
from datamodules.batch import SeqBatch
from datamodules.cache import processed_dir
from datamodules.datamodule import SeqDataModule
from lightning_modules.artifacts import frozen_backbone, resolve_upstream
from lightning_modules.cf_pretrain import CFPretrainModule
from lightning_modules.face_outputs import encode_texts, face_outputs, user_texts
from lightning_modules.frozen import FrozenParts
from lightning_modules.training import begin_stage, device_for, finish, fit_and_test, require_titles

log = logging.getLogger("llmrec")


@dataclass
class FACEConfig:
    """The ``face`` stage (``conf/stage/face.yaml``); official values unless noted there."""

    upstream_stage: ClassVar[str] = "cf_pretrain"
    groups: ClassVar[tuple[str, ...]] = ("llm", "text_encoder")

    name: str = "face"
    init_from: str = ""  # (str) cf_pretrain run dir; "" = runs/<dataset>/cf_pretrain/<backbone>
    lr: float = 1e-3  # (float) Adam lr of the FACE modules
    backbone_lr: float = 1e-4  # (float) Adam lr of the backbone (lr / 10)
    weight_decay: float = 0.0  # (float) Adam weight decay of the backbone
    max_epochs: int = 11  # (int) map + align epochs
    map_epochs: int = 0  # (int) epochs without the alignment loss first (official: a map phase first)
    patience: int = 0  # (int) early stopping on the monitor (0 = off)
    monitor: str = ""  # (str) picks the tested align-phase epoch; "" = the last
    full_ranking_val: bool = True  # (bool) rank the whole catalogue at validation
    ce_compute_dtype: str = "auto"  # (str) matmul dtype of the backbone's chunked softmax loss: auto | bfloat16 | float32
    ce_chunk: int = 0  # (int) rows of logits per chunk of that loss; 0 = sized to the cache
    num_words: int = 16  # (int) descriptors per entity (n)
    word_dim: int = 256  # (int) concept / codebook width (d_w)
    vocab_size: int = 20000  # (int) the most frequent words (wordfreq) a descriptor may be
    min_word_length: int = 2  # (int) shortest descriptor word
    parts_of_speech: str = "any"  # (str) any | noun_adj (the official code: nouns and adjectives, by lemminflect's lexicon)
    dropout: float = 0.1  # (float) dropout of FACE's Transformer layers
    lookup: str = "cosine"  # (str) nearest word by cosine | euclidean (official; collapses onto a few words)
    vq_weight: float = 1.0
    recons_weight: float = 1.0
    align_weight: float = 0.0  # (float) the official alignment (0.1 there); see conf/stage/face.yaml
    temperature: float = 0.02  # (float) InfoNCE temperature
    word_align_weight: float = 1.0  # (float) relaxed word-level alignment (not in the official code; 0 = off)
    word_neighbours: int = 64  # (int) nearest words per slot in its soft assignment
    word_temperature: float = 0.05  # (float) soft assignment: softmax of cosine / this
    word_align_temperature: float = 0.05  # (float) InfoNCE temperature of the word-level alignment
    word_diversity_weight: float = 1.0  # (float) reward for the entropy of the step's averaged soft word choice (0 = off)
    word_align_by_type: bool = True  # (bool) its InfoNCE contrasts items with items and users with users only
    entities_per_step: int = 128  # (int) users per step, with as many positive and random items (FACE's losses)
    encoder_entities_per_step: int = 64  # (int) of those users, how many (with their items) the text encoder reads
    user_prompt: str = "The user and his likes can be described as the following words:"
    item_prompt: str = "The product attracts those who can be described as the following words:"
    user_history: int = 20  # (int) most recent training titles that make a user's text
    text_dtype: str = "auto"  # (str) autocast dtype of the frozen text encoder: auto | bfloat16 | float32
    interpretability_candidates: int = 10  # (int) target + random items ranked by text similarity

    def __post_init__(self) -> None:
        if not 0 <= self.map_epochs <= self.max_epochs:
            raise ValueError(f"stage.map_epochs must be in [0, stage.max_epochs={self.max_epochs}], got {self.map_epochs}")
        for key in ("lr", "backbone_lr", "temperature", "word_temperature", "word_align_temperature"):
            if getattr(self, key) <= 0:
                raise ValueError(f"stage.{key} must be > 0, got {getattr(self, key)}")
        for key in ("num_words", "word_dim", "entities_per_step", "user_history", "vocab_size", "word_neighbours",
                    "encoder_entities_per_step"):
            if getattr(self, key) < 1:
                raise ValueError(f"stage.{key} must be >= 1, got {getattr(self, key)}")
        if self.parts_of_speech not in PARTS_OF_SPEECH:
            raise ValueError(f"stage.parts_of_speech must be one of {list(PARTS_OF_SPEECH)}, got {self.parts_of_speech!r}")
        if self.word_align_weight < 0:
            raise ValueError(f"stage.word_align_weight must be >= 0, got {self.word_align_weight}")
        if self.interpretability_candidates < 2:
            raise ValueError(f"stage.interpretability_candidates must be >= 2, got {self.interpretability_candidates}")
        if self.lookup not in ("cosine", "euclidean"):
            raise ValueError(f"stage.lookup must be cosine or euclidean, got {self.lookup!r}")
        for key in ("text_dtype", "ce_compute_dtype"):
            if getattr(self, key) not in ("auto", "bfloat16", "float32"):
                raise ValueError(f"stage.{key} must be auto, bfloat16 or float32, got {getattr(self, key)!r}")
        if self.patience and not self.monitor:
            raise ValueError(f"stage.patience={self.patience} needs a stage.monitor to stop on")
        if self.monitor.startswith("val/full/") and not self.full_ranking_val:
            raise ValueError(f"stage.monitor={self.monitor} needs stage.full_ranking_val=true")


class FACEModule(FrozenParts, CFPretrainModule):
    """The backbone, FACE's mapper, the frozen text encoder and the entities' text embeddings.

    - ``mapper``: :class:`VQDescriptorMapper` over the LLM's word embeddings.
    - ``bridge``: gradients from the text encoder's inputs back to the concepts.
    - ``user_text [U+1, d]``, ``item_text [N+1, d]``: L2-normalised text embeddings (buffers).
    - ``reference``: a frozen copy of the backbone as loaded, scored at test as ``backbone``.
    """

    test_ranking_sets = ("backbone",)
    test_full_ranking_sets = ("backbone",)  # logged as test/backbone/full/*

    def __init__(
        self,
        backbone: Backbone,
        cfg: FACEConfig,
        loss: str,
        mapper: VQDescriptorMapper,
        bridge: DescriptorBridge,
        text: DescriptorTextEncoder,
        user_text: Tensor,
        item_text: Tensor,
        word_text: Tensor | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, cfg, loss=loss)
        self.reference = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.backbone.requires_grad_(backbone.trainable)
        self.mapper = mapper
        self.bridge = bridge
        self.text = text
        self.register_buffer("user_text", F.normalize(user_text.float(), dim=-1), persistent=False)
        self.register_buffer("item_text", F.normalize(item_text.float(), dim=-1), persistent=False)
        if cfg.word_align_weight > 0 and word_text is None:
            raise ValueError("stage.word_align_weight > 0 needs the text embedding of every vocabulary word (word_text)")
        if word_text is not None and len(word_text) != len(mapper.words):
            raise ValueError(f"word_text has {len(word_text)} rows for {len(mapper.words)} vocabulary words")
        self.register_buffer("word_text", None if word_text is None else F.normalize(word_text.float(), dim=-1), persistent=False)
        self.seed = seed
        self.strict_loading = False  # checkpoints leave out the frozen parts (rebuilt from their sources)
        self.frozen = ("reference", "text")
        self.select_from_epoch = cfg.map_epochs  # map-phase epochs have no aligned descriptors to keep

    @property
    def aligning(self) -> bool:
        return self.current_epoch >= self.cfg.map_epochs

    def _negatives(self, count: int) -> Tensor:
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.global_step]).generate_state(1)[0]))
        return torch.randint(1, self.backbone.num_items + 1, (count,), generator=gen).to(self.device)

    def training_step(self, batch: SeqBatch, batch_idx: int) -> Tensor:
        rec_loss, users = self.backbone_loss(batch)
        k = min(self.cfg.entities_per_step, len(batch))
        user_ids = batch.user_ids[:k]
        pos = batch.pos_items[:k, -1] if batch.pos_items.dim() == 2 else batch.pos_items[:k]
        items = torch.cat([pos, self._negatives(k)])
        if users is None:
            users = self.backbone.encode_user(batch)
        x = torch.cat([users[:k], self.backbone.item_embeddings(items)])
        z_e = self.mapper.encode(x)
        relax = self.aligning and self.cfg.word_align_weight > 0
        indices, near = self.mapper.search(z_e, self.cfg.word_neighbours if relax else 0)
        quantized, vq_loss = self.mapper.quantize(z_e, indices)
        recons_loss = F.mse_loss(self.mapper.reconstruct(quantized), x.detach())
        loss = rec_loss + self.cfg.vq_weight * vq_loss + self.cfg.recons_weight * recons_loss
        size = len(x)
        targets = torch.cat([self.user_text[user_ids], self.item_text[items]]) if self.aligning else None
        if self.aligning and self.cfg.align_weight > 0:
            # the text encoder reads the first j users, their positives and j random items
            j = min(self.cfg.encoder_entities_per_step, k)
            read = torch.cat([torch.arange(j), k + torch.arange(j), 2 * k + torch.arange(j)]).to(x.device)
            described = self.text(self.bridge(quantized[read], indices[read], self.mapper.codebook_map), read < k)
            align_loss = info_nce(described, targets[read], self.cfg.temperature)
            loss = loss + self.cfg.align_weight * align_loss
            with torch.no_grad():
                accuracy = ((described @ targets[read].T).argmax(-1) == torch.arange(len(read), device=x.device)).float().mean()
            self.log("train/loss_align", align_loss, batch_size=len(read))
            self.log("train/align_acc", accuracy, prog_bar=True, batch_size=len(read))
        if relax:
            weights = self.mapper.relaxed(z_e, near, self.cfg.word_temperature)
            groups = (torch.arange(size, device=x.device) >= k).long() if self.cfg.word_align_by_type else None
            described = relaxed_word_text(weights, near, indices, self.word_text)
            word_loss = info_nce(described, targets, self.cfg.word_align_temperature, groups)
            loss = loss + self.cfg.word_align_weight * word_loss
            if self.cfg.word_diversity_weight > 0:
                diversity = word_usage_entropy(weights, near, len(self.mapper.words))
                loss = loss - self.cfg.word_diversity_weight * diversity
                self.log("train/word_diversity", diversity, batch_size=size)
            self.log("train/loss_word_align", word_loss, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/loss_backbone", rec_loss, batch_size=size)
        self.log("train/loss_vq", vq_loss, batch_size=size)
        self.log("train/loss_recons", recons_loss, batch_size=size)
        self.last_face_loss = float((loss - rec_loss).detach())  # FACE's weighted terms alone
        return loss

    def validation_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Tensor]:
        if self.full_ranking_val:
            return CFPretrainModule.test_step(self, batch, batch_idx)  # without the reference's scores
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Tensor]:
        out = super().test_step(batch, batch_idx)
        if batch.candidates is not None:
            out["scores/backbone"] = self.reference.score(batch, batch.candidates)
        out["full_scores/backbone"] = self.reference.score_all(batch)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": list(self.mapper.parameters()), "lr": self.cfg.lr, "weight_decay": 0.0}]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": self.cfg.backbone_lr, "weight_decay": self.cfg.weight_decay})
        return torch.optim.Adam(groups)

    @torch.no_grad()
    def describe(self, vectors: Tensor, batch_size: int = 256) -> Tensor:
        """Descriptor indices ``[N, n]`` (rows of the mapper's codebook) of CF vectors ``[N, D]``."""
        was_training = self.mapper.training
        self.mapper.eval()
        out = []
        for begin in range(0, len(vectors), batch_size):
            out.append(self.mapper.nearest(self.mapper.encode(vectors[begin : begin + batch_size].to(self.device))).cpu())
        self.mapper.train(was_training)
        return torch.cat(out)


def build_face(cfg: Any, device: str | torch.device = "cpu") -> tuple[SeqDataModule, FACEModule, Any]:
    """Data as the backbone was trained on, the pretrained backbone (trainable), FACE's mapper over the
    LLM's word embeddings, the frozen text encoder, and the users' and items' text embeddings.
    Returns ``(datamodule, module, text_encoder)``."""
    s = cfg.stage
    cf_dir = resolve_upstream(cfg)
    saved = OmegaConf.load(cf_dir / "config.yaml") if (cf_dir / "config.yaml").is_file() else None
    loss = saved.backbone.loss if saved is not None and "backbone" in saved else cfg.backbone.loss
    cls = BACKBONES[cfg.backbone.name]
    negatives = 0 if loss == "ce" else (saved.backbone.num_negatives if saved is not None else cfg.backbone.num_negatives)
    datamodule = SeqDataModule(cfg.data, input_kind=cls.input_kind, num_negatives=negatives, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    data = datamodule.data
    require_titles(cfg, data, "FACE aligns descriptors with item and user text")
    backbone = frozen_backbone(cfg, cf_dir, data).train()
    text_encoder = load_text_encoder(cfg.text_encoder)
    if not hasattr(text_encoder, "model"):
        raise ValueError("FACE reads descriptors through a Transformer text encoder; text_encoder=hashing cannot")
    llm_embeddings, llm_tokenizer = load_token_embeddings(cfg.llm)
    sentence_model = text_encoder.model
    llm_ids, text_ids, words = shared_word_vocabulary(
        llm_tokenizer, sentence_model[0].tokenizer, s.vocab_size, min_length=s.min_word_length, parts_of_speech=s.parts_of_speech
    )
    log.info("FACE vocabulary: %d words (LLM %s, text encoder %s)", len(words), cfg.llm.name, cfg.text_encoder.name)
    codebook = llm_embeddings[llm_ids]
    mapper = VQDescriptorMapper(backbone.hidden_dim, codebook, words, s.num_words, s.word_dim, s.dropout, s.lookup)
    text = DescriptorTextEncoder(sentence_model, s.user_prompt, s.item_prompt, s.text_dtype)
    bridge = DescriptorBridge(codebook, text.model.get_input_embeddings().weight[text_ids])
    text_encoder.to(device)
    batch, cache = cfg.text_encoder.batch_size, processed_dir(cfg.data) / "text_embeddings"
    texts = [item_text(t, d) for t, d in zip(data.titles, data.descriptions)]
    items = encode_texts(text_encoder, texts, batch, s.text_dtype, "item texts", cache)
    users = encode_texts(text_encoder, user_texts(data, s.user_history), batch, s.text_dtype, "user texts", cache)
    word_text = encode_texts(text_encoder, words, batch, s.text_dtype, "words", cache) if s.word_align_weight > 0 else None
    module = FACEModule(backbone, s, loss, mapper, bridge, text, users, items, word_text, seed=cfg.seed)
    return datamodule, module, text_encoder


def run_face(cfg: Any) -> dict[str, Any]:
    """FACE: map then align phases on the pretrained backbone; test it against the backbone as loaded;
    write ``descriptors.csv`` and the interpretability scores."""
    start = begin_stage(cfg)
    if start.finished is not None:
        return start.finished
    datamodule, module, text_encoder = build_face(cfg, device_for(cfg))
    s = cfg.stage
    trainer, metrics = fit_and_test(cfg, module, datamodule, start, s.monitor, s.patience, s.max_epochs)
    if trainer.is_global_zero:
        metrics.update(face_outputs(cfg, module, text_encoder, datamodule.data))
    metrics["llm"] = cfg.llm.name
    metrics["loss"] = module.loss_name
    metrics["num_trained_parameters"] = sum(p.numel() for p in module.mapper.parameters())
    weights = {"backbone": module.backbone.state_dict(), "mapper": module.mapper.state_dict()}
    return finish(cfg, trainer, metrics, weights, datamodule.data)
