"""Stage ``face``: FACE (Wang et al., NeurIPS 2025) on a pretrained CF backbone.

Every step adds FACE's losses to the backbone's own loss (reference ``face.md`` section 4):

    L = L_backbone + vq_weight * L_Q + recons_weight * L_rec
        + align_weight * L_align + word_align_weight * L_word (+ the terms below)

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
  drifting onto one shared cluster of words. And ``+ word_title_weight * L_title`` (not in the official
  code): each kept item's slots should cover its own title's descriptor words, IDF-weighted
  (:func:`aligners.descriptor_text.title_word_coverage`).

The backbone keeps training at ``backbone_lr`` (the official lr / 10) and receives FACE's gradients
through its embeddings. The first ``map_epochs`` epochs are the map phase (no alignment terms), the
rest the align phase. Recommendation still uses the backbone's own embeddings; the descriptors are a
by-product for reading and for LLMs.

Items held out from text (``text_heldout_fraction``) are dropped from every text term, and users
enter those terms detached (see :meth:`FACEModule.face_terms`). The tested epoch is the best by
``val/interpretability/acc@1`` on validation users' seen targets.

Test outputs: the trained backbone (``test/*``) and, on the same users and candidates, the
backbone as it came from ``cf_pretrain`` (``test/backbone/*``) and the continued-training control
(``test/control/*``: a copy trained beside it on its own loss alone); then
:func:`lightning_modules.face_outputs.face_outputs` (descriptors, interpretability, probe, judge).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

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
    slot_info_nce,
    title_word_coverage,
    word_usage_entropy,
)
from aligners.llm import load_token_embeddings
from aligners.text_encoder import item_text, load_text_encoder
from aligners.vq_descriptor import VQDescriptorMapper, word_vocabulary
from backbones import BACKBONES
from backbones.base import Backbone
from datamodules.batch import SeqBatch
from datamodules.cache import processed_dir
from datamodules.datamodule import SeqDataModule
from lightning_modules.artifacts import frozen_backbone, resolve_upstream
from lightning_modules.cf_pretrain import CFPretrainModule
from lightning_modules.face_config import FACEConfig
from lightning_modules.face_outputs import (
    draw_candidates,
    encode_texts,
    face_outputs,
    heldout_items,
    interpretability_hits,
    seeded_rows,
    title_word_targets,
    user_texts,
)
from lightning_modules.frozen import FrozenParts
from lightning_modules.training import begin_stage, device_for, finish, fit_and_test, require_titles

log = logging.getLogger("llmrec")


class FACEModule(FrozenParts, CFPretrainModule):
    """The backbone, FACE's mapper, the frozen text encoder and the entities' text embeddings.

    - ``mapper``: :class:`VQDescriptorMapper` over the LLM's word embeddings.
    - ``bridge``: gradients from the text encoder's inputs back to the concepts (``stage.align_weight``
      > 0 only; None otherwise).
    - ``user_text [U+1, d]``, ``item_text [N+1, d]``: L2-normalised text embeddings (buffers).
    - ``reference``: a frozen copy of the backbone as loaded, scored at test as ``backbone``.
    """

    test_ranking_sets: tuple[str, ...] = ("backbone",)
    test_full_ranking_sets: tuple[str, ...] = ("backbone",)  # logged as test/backbone/full/*

    def __init__(
        self,
        backbone: Backbone,
        cfg: FACEConfig,
        loss: str,
        mapper: VQDescriptorMapper,
        bridge: DescriptorBridge | None,
        text: DescriptorTextEncoder,
        user_text: Tensor,
        item_text: Tensor,
        word_text: Tensor | None = None,
        seed: int = 0,
        heldout: Tensor | None = None,
        reader: Any = None,
        val_targets: Tensor | None = None,
        title_targets: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__(backbone, cfg, loss=loss)
        self.reference = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.backbone.requires_grad_(backbone.trainable)
        # The continued-training control: the same backbone, data and schedule on its own loss alone.
        self.control = copy.deepcopy(backbone).requires_grad_(backbone.trainable) if cfg.control else None
        if cfg.control:
            self.test_ranking_sets = self.test_full_ranking_sets = ("backbone", "control")
            self.val_ranking_sets = self.val_full_ranking_sets = ("control",)  # val/control/*: the comparison on validation users
        self.mapper = mapper
        self.bridge = bridge
        self.text = text
        self.register_buffer("user_text", F.normalize(user_text.float(), dim=-1), persistent=False)
        self.register_buffer("item_text", F.normalize(item_text.float(), dim=-1), persistent=False)
        if (cfg.word_align_weight > 0 or cfg.word_slot_weight > 0) and word_text is None:
            raise ValueError("stage.word_align_weight or stage.word_slot_weight > 0 needs the text embedding of every vocabulary word (word_text)")
        if word_text is not None and len(word_text) != len(mapper.words):
            raise ValueError(f"word_text has {len(word_text)} rows for {len(mapper.words)} vocabulary words")
        self.register_buffer("word_text", None if word_text is None else F.normalize(word_text.float(), dim=-1), persistent=False)
        # Items held out from text (bool [N+1]): in no text loss, as anchor or negative.
        heldout = torch.zeros(len(item_text), dtype=torch.bool) if heldout is None else heldout
        if len(heldout) != len(item_text):
            raise ValueError(f"heldout has {len(heldout)} rows for {len(item_text)} items (with the padding row)")
        self.register_buffer("heldout", heldout.bool(), persistent=False)
        self.hides_items = bool(heldout.any())
        if cfg.word_title_weight > 0 and title_targets is None:
            raise ValueError("stage.word_title_weight > 0 needs every item's title words (title_targets)")
        if title_targets is not None and len(title_targets[0]) != len(item_text):
            raise ValueError(f"title_targets has {len(title_targets[0])} rows for {len(item_text)} items (with the padding row)")
        ids, weights = title_targets if title_targets is not None else (None, None)
        self.register_buffer("title_ids", ids, persistent=False)  # [N+1, T] each item's title words (vocabulary rows)
        self.register_buffer("title_weights", weights, persistent=False)  # [N+1, T] their IDF weights (0 = none)
        self.register_buffer("val_targets", val_targets, persistent=False)  # [V] validation targets for val/interpretability*
        self.val_candidates = None if val_targets is None else draw_candidates(val_targets, backbone.num_items, cfg.interpretability_candidates, seed)
        object.__setattr__(self, "reader", reader)  # the text encoder (not a submodule: its weights are in ``text``)
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
        terms = self.face_terms(batch, users)
        c = self.cfg
        face = c.vq_weight * terms["vq"] + c.recons_weight * terms["recons"]
        text_terms = (("align", c.align_weight, "train/loss_align"), ("word_align", c.word_align_weight, "train/loss_word_align"),
                      ("word_slot", c.word_slot_weight, "train/loss_word_slot"),
                      ("word_title", c.word_title_weight, "train/loss_word_title"),
                      ("word_diversity", -c.word_diversity_weight, "train/word_diversity"))
        for name, weight, key in text_terms:
            if name in terms:
                face = face + weight * terms[name]
                self.log(key, terms[name], batch_size=len(batch))
        loss = rec_loss + face
        if self.control is not None:
            control_loss, _ = self.backbone_loss(batch, self.control)  # its own parameters: a separate optimisation
            loss = loss + control_loss
            self.log("train/loss_control", control_loss, batch_size=len(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/loss_backbone", rec_loss, batch_size=len(batch))
        self.log("train/loss_vq", terms["vq"], batch_size=len(batch))
        self.log("train/loss_recons", terms["recons"], batch_size=len(batch))
        self.last_face_loss = float(face.detach())  # FACE's weighted terms alone
        return loss

    def face_terms(self, batch: SeqBatch, users: Tensor | None = None) -> dict[str, Tensor]:
        """FACE's unweighted losses on the step's entities: ``vq`` and ``recons`` (CF only) and, in the
        align phase, the text terms ``align``, ``word_align`` and ``word_diversity`` where enabled.

        The text terms see no held-out item: those rows are dropped before them (not anchors, not
        negatives), and users enter them detached, because a user's vector is read from a history
        that may hold held-out items. ``users``: the batch's user vectors when already computed."""
        k = min(self.cfg.entities_per_step, len(batch))
        user_ids = batch.user_ids[:k]
        pos = batch.pos_items[:k, -1] if batch.pos_items.dim() == 2 else batch.pos_items[:k]
        items = torch.cat([pos, self._negatives(k)])
        if users is None:
            users = self.backbone.encode_user(batch)
        x = torch.cat([users[:k], self.backbone.item_embeddings(items)])
        if self.cfg.backbone_face_grad != 1:  # the same values; FACE's gradient into the backbone scaled
            x = x * self.cfg.backbone_face_grad + x.detach() * (1 - self.cfg.backbone_face_grad)
        z_e = self.mapper.encode(x)
        relax = self.aligning and (self.cfg.word_align_weight > 0 or self.cfg.word_slot_weight > 0 or self.cfg.word_title_weight > 0)
        indices, near = self.mapper.search(z_e, self.cfg.word_neighbours if relax else 0)
        quantized, vq_loss = self.mapper.quantize(z_e, indices)
        if self.cfg.word_balance_cap > 0 and self.training:
            self.mapper.balance(indices, self.cfg.word_balance_cap, self.cfg.word_balance_rate)
        terms = {"vq": vq_loss, "recons": F.mse_loss(self.mapper.reconstruct(quantized), x.detach())}
        if not self.aligning or not (relax or self.cfg.align_weight > 0):
            return terms
        # The text terms' rows: users (re-encoded from detached vectors when items are held out: same
        # words, no gradient into the history's item embeddings) and the kept items as they are.
        kept = k + (~self.heldout[items]).nonzero().squeeze(1)
        z_users = self.mapper.encode(users[:k].detach(), update=False) if self.hides_items else z_e[:k]
        q_users = self.mapper.quantize(z_users, indices[:k])[0] if self.hides_items else quantized[:k]
        z_text = torch.cat([z_users, z_e[kept]])
        idx_text = torch.cat([indices[:k], indices[kept]])
        near_text = None if near is None else torch.cat([near[:k], near[kept]])
        q_text = torch.cat([q_users, quantized[kept]])
        kept_items = items[kept - k]
        targets = torch.cat([self.user_text[user_ids], self.item_text[kept_items]])
        kind = torch.cat([torch.zeros(k, device=x.device), torch.where(kept < 2 * k, 1.0, 2.0)])  # user, positive, random
        is_user = kind == 0
        if self.cfg.align_weight > 0:
            # the text encoder reads the first j users, the first j kept positives and j kept random items
            j = min(self.cfg.encoder_entities_per_step, k)
            rank = torch.stack([(kind == t).long().cumsum(0) for t in range(3)], 1).gather(1, kind.long().unsqueeze(1)).squeeze(1)
            read = (rank <= j).nonzero().squeeze(1)  # 1-based rank of a row within its kind
            described = self.text(self.bridge(q_text[read], idx_text[read], self.mapper.codebook_map), is_user[read])
            terms["align"] = info_nce(described, targets[read], self.cfg.temperature)
            with torch.no_grad():
                accuracy = ((described @ targets[read].T).argmax(-1) == torch.arange(len(read), device=x.device)).float().mean()
            self.log("train/align_acc", accuracy, prog_bar=True, batch_size=len(read))
        if relax:
            logits = self.mapper.relaxed_logits(z_text, near_text, self.cfg.word_temperature)
            weights = logits.softmax(-1)
            groups = (~is_user).long() if self.cfg.word_align_by_type else None
            if self.cfg.word_align_weight > 0:
                described = relaxed_word_text(weights, near_text, idx_text, self.word_text)
                terms["word_align"] = info_nce(described, targets, self.cfg.word_align_temperature, groups)
            if self.cfg.word_slot_weight > 0:
                terms["word_slot"] = slot_info_nce(weights, near_text, idx_text, self.word_text, targets,
                                                   self.cfg.word_align_temperature, groups)
            if self.cfg.word_title_weight > 0:  # the kept items' own title words (held-out items are not kept)
                ids = self.title_ids[kept_items].unsqueeze(1).expand(-1, indices.shape[1], -1)
                title_logits = self.mapper.relaxed_logits(z_text[k:], ids, self.cfg.word_temperature)
                terms["word_title"] = title_word_coverage(title_logits, logits[k:].logsumexp(-1), self.title_weights[kept_items])
            if self.cfg.word_diversity_weight > 0:
                terms["word_diversity"] = word_usage_entropy(weights, near_text, len(self.mapper.words))
        return terms

    def validation_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Tensor]:
        if not self.full_ranking_val:
            return super().validation_step(batch, batch_idx)
        out = CFPretrainModule.test_step(self, batch, batch_idx)  # without the reference's scores
        if self.control is not None:
            if batch.candidates is not None:
                out["scores/control"] = self.control.score(batch, batch.candidates)
            out["full_scores/control"] = self.control.score_all(batch)
        return out

    def on_validation_epoch_end(self) -> None:
        if self.cfg.word_item_cap > 0 and not self.trainer.sanity_checking:
            for key, value in self.calibrate_words().items():
                self.log(key, value)
        if self.val_targets is not None and self.reader is not None and len(self.val_targets):
            for key, value in self.val_interpretability().items():
                self.log(key, value, batch_size=len(self.val_targets))

    @torch.no_grad()
    def item_concepts(self, batch_size: int = 1024) -> Tensor:
        """Every item's concepts ``[N, n, d_w]`` as the mapper reads them out (eval mode, items 1..N)."""
        was_training = self.mapper.training
        self.mapper.eval()
        items = torch.arange(1, self.backbone.num_items + 1, device=self.device)
        z = torch.cat([self.mapper.encode(self.backbone.item_embeddings(items[b : b + batch_size]).float())
                       for b in range(0, len(items), batch_size)])
        self.mapper.train(was_training)
        return z

    @torch.no_grad()
    def calibrate_words(self) -> dict[str, float]:
        """Raise the mapper's lookup penalties until no word is in more than ``stage.word_item_cap`` of
        the items' descriptors (:meth:`VQDescriptorMapper.calibrate`, over every item's CF vector; no
        text is read). Runs before the epoch's validation figures, so they score the words as read out."""
        rounds, picks = self.mapper.calibrate(self.item_concepts(), self.cfg.word_item_cap)
        share = torch.bincount(picks.flatten(), minlength=len(self.mapper.words)).float() / len(picks)
        return {"val/descriptors/calibration_rounds": float(rounds), "val/descriptors/top_word_item_share": float(share.max()),
                "val/descriptors/distinct_words": float((share > 0).sum()), "val/descriptors/max_word_penalty": float(self.mapper.word_bias.max())}

    @torch.no_grad()
    def val_interpretability(self) -> dict[str, float]:
        """``val/interpretability/acc@1`` (seen targets) and ``val/interpretability_heldout/acc@1``: the
        validation targets' descriptor words, read by the text encoder, ranked against the target's
        item text and 9 random items' (seeded, the same candidates every epoch). Picks the tested epoch."""
        targets = self.val_targets.cpu()
        unique, inverse = torch.unique(targets, return_inverse=True)
        words = self.mapper.explain(self.describe(self.backbone.item_embeddings(unique.to(self.device)).float()))
        described = encode_texts(self.reader, [", ".join(w) for w in words], 256, self.cfg.text_dtype, "val descriptors").cpu()
        hits = interpretability_hits(described[inverse], self.item_text.cpu(), self.val_candidates).float()
        held = self.heldout.cpu()[targets]
        out = {"val/interpretability/acc@1": float(hits[~held].mean()) if (~held).any() else 0.0}
        if held.any():
            out["val/interpretability_heldout/acc@1"] = float(hits[held].mean())
        return out

    def test_step(self, batch: SeqBatch, batch_idx: int) -> dict[str, Tensor]:
        out = super().test_step(batch, batch_idx)
        scorers = {"backbone": self.reference} | ({"control": self.control} if self.control is not None else {})
        for name, scorer in scorers.items():
            if batch.candidates is not None:
                out[f"scores/{name}"] = scorer.score(batch, batch.candidates)
            out[f"full_scores/{name}"] = scorer.score_all(batch)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": list(self.mapper.parameters()), "lr": self.cfg.lr, "weight_decay": 0.0}]
        for backbone in (self.backbone, self.control):
            params = [] if backbone is None else [p for p in backbone.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": self.cfg.backbone_lr, "weight_decay": self.cfg.weight_decay})
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
    if s.align_weight > 0:  # the encoder reads each word's own input embedding: one token of both vocabularies
        llm_ids, text_ids, words = shared_word_vocabulary(
            llm_tokenizer, sentence_model[0].tokenizer, s.vocab_size, min_length=s.min_word_length, parts_of_speech=s.parts_of_speech
        )
    else:  # the word-level terms read each word's sentence embedding: any word the encoder can spell ("shampoo")
        llm_ids, words = word_vocabulary(llm_tokenizer, s.vocab_size, min_length=s.min_word_length, parts_of_speech=s.parts_of_speech)
        text_ids = None
    log.info("FACE vocabulary: %d words (LLM %s, text encoder %s)", len(words), cfg.llm.name, cfg.text_encoder.name)
    codebook = llm_embeddings[llm_ids]
    mapper = VQDescriptorMapper(backbone.hidden_dim, codebook, words, s.num_words, s.word_dim, s.dropout, s.lookup, s.standardize_concepts, balance=s.word_balance_cap > 0 or s.word_item_cap > 0)
    text = DescriptorTextEncoder(sentence_model, s.user_prompt, s.item_prompt, s.text_dtype)
    bridge = None if text_ids is None else DescriptorBridge(codebook, text.model.get_input_embeddings().weight[text_ids])
    text_encoder.to(device)
    batch, cache = cfg.text_encoder.batch_size, processed_dir(cfg.data) / "text_embeddings"
    texts = [item_text(t, d) for t, d in zip(data.titles, data.descriptions)]
    counts = torch.bincount(data.train_interactions()[:, 1], minlength=data.num_items + 1)
    heldout = heldout_items(counts, s.text_heldout_fraction, cfg.seed)
    log.info("FACE: %d of %d items held out from every text loss (stage.text_heldout_fraction=%s)",
             int(heldout.sum()), data.num_items, s.text_heldout_fraction)
    items = encode_texts(text_encoder, texts, batch, s.text_dtype, "item texts", cache)
    users = encode_texts(text_encoder, user_texts(data, s.user_history, heldout), batch, s.text_dtype, "user texts", cache)
    word_text = encode_texts(text_encoder, words, batch, s.text_dtype, "words", cache) if s.word_align_weight > 0 or s.word_slot_weight > 0 else None
    val_targets = None
    if s.val_interpretability_users > 0 and data.valid_candidates is not None:
        val_users = seeded_rows(data.split_users("val"), s.val_interpretability_users, cfg.data.eval_seed)
        val_targets = data.valid_candidates[val_users, 0]
    title_targets = title_word_targets(data.titles, words, heldout) if s.word_title_weight > 0 else None
    module = FACEModule(backbone, s, loss, mapper, bridge, text, users, items, word_text, seed=cfg.seed,
                        heldout=heldout, reader=text_encoder, val_targets=val_targets, title_targets=title_targets)
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
    # the vocabulary the mapper's indices refer to, so that a run never loads over another one
    weights = {"backbone": module.backbone.state_dict(), "mapper": module.mapper.state_dict(), "words": list(module.mapper.words)}
    if module.control is not None:  # the continued-training control, so that its comparison can be redone
        weights["control"] = module.control.state_dict()
    return finish(cfg, trainer, metrics, weights, datamodule.data)
