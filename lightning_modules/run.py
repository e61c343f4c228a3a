"""The one entry point: ``python -m lightning_modules.run [group=option ...] [key=value ...]``.

Examples::

    python -m lightning_modules.run data=beauty backbone=sasrec data.data_dir=../shared/data/amazon/Beauty/prepared
    python -m lightning_modules.run data=synthetic backbone=gru4rec backbone.loss=bce stage.max_epochs=3

Groups (``conf/<group>/<option>.yaml``): data, backbone, stage, trainer, logger. Every other
argument is an OmegaConf dotlist override (``backbone.hidden_dim=128``), which is also what W&B
sweep agents pass.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import OmegaConf

from aligners.collab_text import CollabTextAligner, MLPAutoencoder
from aligners.descriptor_text import DescriptorBridge, DescriptorTextEncoder, shared_word_vocabulary
from aligners.llm import load_llm, load_token_embeddings
from aligners.prompt import PromptBuilder
from aligners.text_encoder import item_text, load_text_encoder
from aligners.vq_descriptor import VQDescriptorMapper
from backbones import BACKBONES, build_backbone
from callbacks.artifacts import write_metrics_json, write_text, write_weights
from callbacks.loggers import build_loggers, log_run_results
from callbacks.ranking import RankingMetricsCallback
from callbacks.timing import TimingCallback
from datamodules.cache import processed_dir
from datamodules.datamodule import SeqDataModule
from lightning_modules.align_stage1 import CollabTextAlignModule
from lightning_modules.align_stage2 import LLMProjectionModule
from lightning_modules.artifacts import StageArtifactError, check_run_dir, load_backbone
from lightning_modules.cf_pretrain import CFPretrainModule
from lightning_modules.config import LLM_STAGES, STAGE_GROUPS, RunConfig, compose, to_yaml
from lightning_modules.face import (
    FACEModule,
    descriptors_csv,
    entity_vectors,
    interpretability_accuracy,
    user_texts,
)

log = logging.getLogger("llmrec")


def _is_rank_zero() -> bool:
    # Lightning's DDP launcher re-executes this script per rank with RANK/LOCAL_RANK set.
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


IDENTITY_KEYS = ("seed", "data", "backbone", "stage")


def _identity(node: Any) -> str:
    """The part of a config that must match for a checkpoint to be resumed, as YAML."""
    keys = IDENTITY_KEYS + STAGE_GROUPS.get(node["stage"]["name"], ())
    return OmegaConf.to_yaml({k: node[k] for k in keys if k in node})


def _resume_path(cfg: RunConfig, run_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt`` when the saved config matches; otherwise stale files are cleared."""
    last, saved = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
    if cfg.resume and last.is_file() and saved.is_file():
        try:
            same = _identity(OmegaConf.load(saved)) == _identity(OmegaConf.structured(cfg))
        except Exception:  # an unreadable or foreign config.yaml simply means "do not resume"
            same = False
        if same:
            log.info("resuming from %s", last)
            return last
        log.warning("%s holds a run with another config; starting afresh", run_dir)
    if _is_rank_zero():
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)
    return None


class _CheckpointFrom(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose best-model choice ignores epochs before ``first_epoch`` (``last.ckpt`` is kept as usual)."""

    def __init__(self, first_epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_epoch = first_epoch

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if trainer.current_epoch >= self.first_epoch:
            super()._save_topk_checkpoint(trainer, monitor_candidates)


def build_trainer(
    cfg: RunConfig, run_dir: Path, callbacks: list[L.Callback], max_epochs: int, validate: bool = True
) -> L.Trainer:
    t = cfg.trainer
    loggers = build_loggers(
        cfg.logger.name,
        run_dir,
        run_name=f"{cfg.data.name}-{cfg.stage.name}-{cfg.backbone.name}",
        group=f"{cfg.data.name}/{cfg.backbone.name}",
        job_type=cfg.stage.name,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        mode=cfg.logger.mode,
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),
    )
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        deterministic=t.deterministic,
        max_epochs=max_epochs,
        max_time=t.max_time or None,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches if validate else 0,
        limit_test_batches=t.limit_test_batches,
        gradient_clip_val=t.gradient_clip_val or None,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
        # Samplers are ours: disjoint training shards and unpadded evaluation shards.
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )


def build_cf_pretrain(cfg: RunConfig) -> tuple[SeqDataModule, CFPretrainModule]:
    """The prepared datamodule and the stage module with a freshly initialised backbone.

    The datamodule serves what the backbone consumes (sequences or user-item pairs) with as many
    negatives as the loss needs (none for the full softmax).
    """
    cls = BACKBONES[cfg.backbone.name]
    negatives = 0 if cfg.backbone.loss == "ce" else cfg.backbone.num_negatives
    datamodule = SeqDataModule(cfg.data, input_kind=cls.input_kind, num_negatives=negatives, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    data = datamodule.data
    interactions = data.train_interactions() if cls.needs_interactions else None
    backbone = build_backbone(cfg.backbone, data.num_items, data.num_users, interactions=interactions)
    return datamodule, CFPretrainModule(backbone, cfg.stage, loss=cfg.backbone.loss)


def _fit_and_test(
    cfg: RunConfig,
    module: L.LightningModule,
    datamodule: SeqDataModule,
    resume: Path | None,
    monitor: str,
    patience: int,
    max_epochs: int,
    trainable: bool = True,
    validate: bool = True,
) -> tuple[L.Trainer, dict[str, Any]]:
    """Fit (keeping the best epoch by ``monitor`` when validating and ``monitor`` is set, else the last),
    test it, and return the trainer with the flat metrics: ``test/*``, timing, ``epochs`` and
    ``best_<monitor>``."""
    run_dir = cfg.run_dir
    if patience and validate and not monitor:
        raise ValueError(f"stage.patience={patience} needs a stage.monitor to stop on")
    timing = TimingCallback()
    callbacks: list[L.Callback] = [RankingMetricsCallback(), timing]
    checkpoint = None
    fit = trainable and max_epochs > 0
    if fit:
        checkpoint = _CheckpointFrom(
            # e.g. FACE: only align-phase epochs have trained descriptors to keep
            first_epoch=getattr(module, "select_from_epoch", 0),
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor=(monitor or None) if validate else None,
            mode="max",
            save_last=True,
        )
        callbacks.append(checkpoint)
        if validate and patience:
            callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    trainer = build_trainer(cfg, run_dir, callbacks, max_epochs=max_epochs, validate=validate)
    if fit:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        best = checkpoint.best_model_path if validate else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    else:
        trainer.test(module, datamodule=datamodule)
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    metrics.update(timing.summary())
    metrics["epochs"] = trainer.current_epoch if fit else 0
    if monitor and checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best_{monitor}"] = float(checkpoint.best_model_score)
    return trainer, metrics


def _finish(cfg: RunConfig, trainer: L.Trainer, metrics: dict[str, Any], weights: dict[str, Any], data: Any) -> dict[str, Any]:
    """Add the run's identity to ``metrics``; rank 0 writes ``weights.pt`` and ``metrics.json``."""
    metrics.update(
        {
            "dataset": cfg.data.name,
            "backbone": cfg.backbone.name,
            "stage": cfg.stage.name,
            "seed": cfg.seed,
            "num_users": data.num_users,
            "num_items": data.num_items,
            "num_eval_users": int(len(data.eval_users)),
        }
    )
    if trainer.is_global_zero:
        write_weights(cfg.run_dir / "weights.pt", weights)
        write_metrics_json(cfg.run_dir / "metrics.json", metrics)
        log.info("wrote %s", cfg.run_dir / "metrics.json")
        files = [cfg.run_dir / name for name in ("metrics.json", "config.yaml", "descriptors.csv")]
        name = "-".join((cfg.data.name, cfg.stage.name, cfg.backbone.name) + ((cfg.llm.name,) if cfg.stage.name in LLM_STAGES else ()))
        log_run_results(trainer.loggers, metrics, files, name)
    return metrics


def _start_run(cfg: RunConfig) -> Path | None:
    resume = _resume_path(cfg, cfg.run_dir)
    if _is_rank_zero():
        write_text(cfg.run_dir / "config.yaml", to_yaml(cfg))
    return resume


def run_cf_pretrain(cfg: RunConfig) -> dict[str, Any]:
    """Train (unless the backbone has nothing to train), test the best checkpoint, write artifacts."""
    resume = _start_run(cfg)
    datamodule, module = build_cf_pretrain(cfg)
    backbone = module.backbone
    trainer, metrics = _fit_and_test(
        cfg, module, datamodule, resume, cfg.stage.monitor, cfg.stage.patience, cfg.stage.max_epochs, backbone.trainable
    )
    metrics["loss"] = cfg.backbone.loss if backbone.trainable else "none"
    metrics["num_parameters"] = sum(p.numel() for p in backbone.parameters())
    return _finish(cfg, trainer, metrics, backbone.state_dict(), datamodule.data)


def _init_from(cfg: RunConfig, stage: str) -> Path:
    """The earlier run this stage starts from; recorded in the saved config so later stages find it."""
    path = Path(cfg.stage.init_from) if cfg.stage.init_from else cfg.stage_run_dir(stage)
    cfg.stage.init_from = str(path)
    return path


def _stage_data(cfg: RunConfig, stage_cfg: Any, num_negatives: int, input_kind: str = "last_item") -> SeqDataModule:
    datamodule = SeqDataModule(
        cfg.data,
        input_kind=input_kind,
        num_negatives=num_negatives,
        seed=cfg.seed,
        batch_size=stage_cfg.batch_size,
        eval_batch_size=getattr(stage_cfg, "eval_batch_size", None),
        max_train_users=stage_cfg.max_train_users,
        max_eval_users=stage_cfg.max_eval_users,
    )
    datamodule.prepare_data()
    datamodule.setup()
    _require_titles(cfg, datamodule.data, "A-LLMRec aligns item embeddings with item text")
    if not datamodule.data.has_candidates:
        raise ValueError(
            f"data={cfg.data.name} (source {cfg.data.source}) has no sampled evaluation candidates; A-LLMRec picks "
            "the next item among them. Use an Amazon or prepared dataset (rlmrec data is for cf_pretrain and FACE's full ranking)"
        )
    return datamodule


def _require_titles(cfg: RunConfig, data: Any, why: str) -> None:
    if not any(data.titles[1:]):
        raise ValueError(
            f"data={cfg.data.name} (source {cfg.data.source}) has no item titles; {why}. "
            "Use an Amazon or prepared dataset whose items.csv has titles"
        )


def _frozen_backbone(cfg: RunConfig, cf_dir: Path, data: Any) -> Any:
    check_run_dir(cf_dir, "cf_pretrain", cfg.data.name, data.num_items, cfg.backbone.name)
    return load_backbone(cf_dir, data)


def build_align_stage1(cfg: RunConfig) -> tuple[SeqDataModule, CollabTextAlignModule]:
    """Data (one last-item example per user, one negative) and the stage-1 module on a frozen backbone."""
    cf_dir = _init_from(cfg, "cf_pretrain")
    datamodule = _stage_data(cfg, cfg.stage, num_negatives=1)
    data = datamodule.data
    backbone = _frozen_backbone(cfg, cf_dir, data)
    text_encoder = load_text_encoder(cfg.text_encoder)
    s = cfg.stage
    aligner = CollabTextAligner(
        backbone.hidden_dim, text_encoder.dim, s.latent_dim, s.item_recon_weight, s.text_recon_weight, s.rec_score
    )
    texts = [item_text(t, d) for t, d in zip(data.titles, data.descriptions)]
    module = CollabTextAlignModule(backbone, text_encoder, aligner, texts, s, cfg.text_encoder.batch_size)
    return datamodule, module


def run_align_stage1(cfg: RunConfig) -> dict[str, Any]:
    """Stage 1; also writes ``text_latents.pt`` ([N+1, d'] text-path item latents) for stage 2's cold-item variant."""
    datamodule, module = build_align_stage1(cfg)
    resume = _start_run(cfg)
    trainer, metrics = _fit_and_test(cfg, module, datamodule, resume, cfg.stage.monitor, cfg.stage.patience, cfg.stage.max_epochs)
    if trainer.is_global_zero:
        write_weights(cfg.run_dir / "text_latents.pt", {"text_latents": module.text_latents()})
    metrics["num_trained_parameters"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return _finish(cfg, trainer, metrics, module.trained_state(), datamodule.data)


def build_align_stage2(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[SeqDataModule, LLMProjectionModule]:
    """Data (last-item examples with 19 negatives), the frozen backbone, stage-1 encoder and LLM, and the projectors."""
    s = cfg.stage
    stage1_dir = _init_from(cfg, "align_stage1")
    datamodule = _stage_data(cfg, s, num_negatives=s.num_negatives)
    data = datamodule.data
    saved1 = check_run_dir(stage1_dir, "align_stage1", cfg.data.name, data.num_items, cfg.backbone.name)
    backbone = _frozen_backbone(cfg, Path(saved1["stage"]["init_from"]), data)
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


def _device(cfg: RunConfig) -> torch.device:
    """Where this process's LLM lives: its GPU under CUDA (LOCAL_RANK under DDP), else the CPU."""
    wants_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if wants_gpu else torch.device("cpu")


def run_align_stage2(cfg: RunConfig) -> dict[str, Any]:
    """Stage 2: train the projectors, then evaluate A-LLMRec, its variants and baselines on the frozen candidates."""
    datamodule, module = build_align_stage2(cfg, _device(cfg))
    resume = _start_run(cfg)
    s = cfg.stage
    trainer, metrics = _fit_and_test(cfg, module, datamodule, resume, s.monitor, 0, s.max_epochs, validate=s.validate)
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
    return _finish(cfg, trainer, metrics, {"projector": module.projector.state_dict()}, datamodule.data)


def _encode(encoder: Any, texts: list[str], batch_size: int, dtype: str, desc: str, cache_dir: Path | None = None) -> torch.Tensor:
    """Text embeddings ``[len(texts), d]``; with ``cache_dir``, reused from a file named by a hash of the
    texts, the encoder's weights and the dtype (the frozen encoder gives the same vectors every run)."""
    device = next(encoder.parameters()).device
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{dtype}\n{type(encoder).__name__}\n".encode())
        for param in list(encoder.parameters())[:4]:  # enough to tell encoders apart cheaply
            digest.update(param.detach().float().cpu().numpy().tobytes()[:4096])
        digest.update("\x00".join(texts).encode())
        path = cache_dir / f"{desc.replace(' ', '_')}-{digest.hexdigest()[:16]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        out = encoder.encode(texts, batch_size, progress=True, desc=desc)
    if path is not None and _is_rank_zero():
        write_weights(path, out)
    return out


def build_face(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[SeqDataModule, FACEModule, Any]:
    """Data as the backbone was trained on, the pretrained backbone (trainable), FACE's mapper over the
    LLM's word embeddings, the frozen text encoder, and the users' and items' text embeddings.
    Returns ``(datamodule, module, text_encoder)``."""
    s = cfg.stage
    cf_dir = _init_from(cfg, "cf_pretrain")
    saved = OmegaConf.load(cf_dir / "config.yaml") if (cf_dir / "config.yaml").is_file() else None
    loss = saved.backbone.loss if saved is not None and "backbone" in saved else cfg.backbone.loss
    cls = BACKBONES[cfg.backbone.name]
    negatives = 0 if loss == "ce" else (saved.backbone.num_negatives if saved is not None else cfg.backbone.num_negatives)
    datamodule = SeqDataModule(cfg.data, input_kind=cls.input_kind, num_negatives=negatives, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    data = datamodule.data
    _require_titles(cfg, data, "FACE aligns descriptors with item and user text")
    backbone = _frozen_backbone(cfg, cf_dir, data).train()
    text_encoder = load_text_encoder(cfg.text_encoder)
    if not hasattr(text_encoder, "model"):
        raise ValueError("FACE reads descriptors through a Transformer text encoder; text_encoder=hashing cannot")
    llm_embeddings, llm_tokenizer = load_token_embeddings(cfg.llm)
    sentence_model = text_encoder.model
    llm_ids, text_ids, words = shared_word_vocabulary(
        llm_tokenizer, sentence_model[0].tokenizer, s.vocab_size, min_length=s.min_word_length
    )
    log.info("FACE vocabulary: %d words (LLM %s, text encoder %s)", len(words), cfg.llm.name, cfg.text_encoder.name)
    codebook = llm_embeddings[llm_ids]
    mapper = VQDescriptorMapper(backbone.hidden_dim, codebook, words, s.num_words, s.word_dim, s.dropout, s.lookup)
    text = DescriptorTextEncoder(sentence_model, s.user_prompt, s.item_prompt, s.text_dtype)
    bridge = DescriptorBridge(codebook, text.model.get_input_embeddings().weight[text_ids])
    text_encoder.to(device)
    batch, cache = cfg.text_encoder.batch_size, processed_dir(cfg.data) / "text_embeddings"
    texts = [item_text(t, d) for t, d in zip(data.titles, data.descriptions)]
    items = _encode(text_encoder, texts, batch, s.text_dtype, "item texts", cache)
    users = _encode(text_encoder, user_texts(data, s.user_history), batch, s.text_dtype, "user texts", cache)
    word_text = _encode(text_encoder, words, batch, s.text_dtype, "words", cache) if s.word_align_weight > 0 else None
    module = FACEModule(backbone, s, loss, mapper, bridge, text, users, items, word_text, seed=cfg.seed)
    return datamodule, module, text_encoder


def _face_outputs(cfg: RunConfig, module: FACEModule, text_encoder: Any, data: Any) -> dict[str, float]:
    """Writes ``descriptors.csv``; returns the interpretability metrics (descriptors and the random control)."""
    s = cfg.stage
    module.eval()
    users, items = entity_vectors(module.backbone, data, cfg.data.max_len)
    words = module.mapper.words
    item_words = module.mapper.explain(module.describe(items[1:]))
    user_words = module.mapper.explain(module.describe(users[1:]))
    write_text(cfg.run_dir / "descriptors.csv", descriptors_csv(data, item_words, user_words))
    # Each test user's target item, among random others, ranked by similarity of its words to titles.
    targets = data.test_candidates[data.eval_users, 0]
    batch = cfg.text_encoder.batch_size
    titles = _encode(text_encoder, [t or "No title" for t in data.titles], batch, s.text_dtype, "titles", processed_dir(cfg.data) / "text_embeddings")
    unique, inverse = torch.unique(targets, return_inverse=True)
    described = _encode(text_encoder, [", ".join(item_words[i - 1]) for i in unique.tolist()], batch, s.text_dtype, "descriptors")
    acc, _ = interpretability_accuracy(described[inverse], titles, targets, s.interpretability_candidates, cfg.data.eval_seed)
    rng = np.random.default_rng(cfg.data.eval_seed)
    random_words = [", ".join(words[j] for j in rng.choice(len(words), s.num_words, replace=False)) for _ in range(len(targets))]
    control = _encode(text_encoder, random_words, batch, s.text_dtype, "random descriptors")
    acc_random, _ = interpretability_accuracy(control, titles, targets, s.interpretability_candidates, cfg.data.eval_seed)
    return {
        "test/interpretability/acc@1": acc,
        "test/interpretability_random/acc@1": acc_random,
        "num_interpretability_users": len(targets),
        "vocabulary_size": len(words),
        "distinct_item_words": len({w for ws in item_words for w in ws}),
    }


def run_face(cfg: RunConfig) -> dict[str, Any]:
    """FACE: map then align phases on the pretrained backbone; test it against the backbone as loaded;
    write ``descriptors.csv`` and the interpretability scores."""
    datamodule, module, text_encoder = build_face(cfg, _device(cfg))
    resume = _start_run(cfg)
    s = cfg.stage
    trainer, metrics = _fit_and_test(cfg, module, datamodule, resume, s.monitor, s.patience, s.max_epochs)
    if trainer.is_global_zero:
        metrics.update(_face_outputs(cfg, module, text_encoder, datamodule.data))
    metrics["llm"] = cfg.llm.name
    metrics["loss"] = module.loss_name
    metrics["num_trained_parameters"] = sum(p.numel() for p in module.mapper.parameters())
    weights = {"backbone": module.backbone.state_dict(), "mapper": module.mapper.state_dict()}
    return _finish(cfg, trainer, metrics, weights, datamodule.data)


STAGES = {
    "cf_pretrain": run_cf_pretrain,
    "align_stage1": run_align_stage1,
    "align_stage2": run_align_stage2,
    "face": run_face,
}


def run(cfg: RunConfig) -> dict[str, Any]:
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return STAGES[cfg.stage.name](cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = compose(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        log.error("%s", err)
        return 2
    sweep, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run_id and not cfg.paths.run_dir:  # a W&B sweep agent's trial: a run directory of its own
        cfg.paths.run_dir = str(Path(cfg.paths.runs) / "sweeps" / sweep / run_id)
    try:
        metrics = run(cfg)
    except StageArtifactError as err:  # a missing earlier stage: say which command makes it
        log.error("%s", err)
        return 2
    keys = (
        "test/hit@1", "test/ndcg@10", "test/full/hit@10", "test/full/ndcg@10", "test/full/recall@20",
        "test/generate/hit@1", "test/llm_only/hit@1", "test/backbone/full/ndcg@10", "test/interpretability/acc@1",
        "test/interpretability_random/acc@1",
    )
    summary = {k: round(v, 4) for k, v in metrics.items() if k in keys}
    log.info("%s %s on %s: %s", cfg.stage.name, cfg.backbone.name, cfg.data.name, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
