"""The one entry point: ``python -m lightning_modules.run [group=option ...] [key=value ...]``.

Examples::

    python -m lightning_modules.run data=beauty backbone=sasrec data.data_dir=../shared/data/amazon/Beauty/prepared
    python -m lightning_modules.run data=synthetic backbone=gru4rec backbone.loss=bce stage.max_epochs=3

Groups (``conf/<group>/<option>.yaml``): data, backbone, stage, trainer, logger. Every other
argument is an OmegaConf dotlist override (``backbone.hidden_dim=128``), which is also what W&B
sweep agents pass.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import OmegaConf

from backbones import BACKBONES, build_backbone
from callbacks.artifacts import write_metrics_json, write_text, write_weights
from callbacks.loggers import build_loggers
from callbacks.ranking import RankingMetricsCallback
from callbacks.timing import TimingCallback
from datamodules.datamodule import SeqDataModule
from lightning_modules.cf_pretrain import CFPretrainModule
from lightning_modules.config import RunConfig, compose, to_yaml

log = logging.getLogger("llmrec")


def _is_rank_zero() -> bool:
    # Lightning's DDP launcher re-executes this script per rank with RANK/LOCAL_RANK set.
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


IDENTITY_KEYS = ("seed", "data", "backbone", "stage")


def _identity(node: Any) -> str:
    """The part of a config that must match for a checkpoint to be resumed, as YAML."""
    return OmegaConf.to_yaml({k: node[k] for k in IDENTITY_KEYS})


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


def build_trainer(cfg: RunConfig, run_dir: Path, callbacks: list[L.Callback], max_epochs: int) -> L.Trainer:
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
        limit_val_batches=t.limit_val_batches,
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


def run_cf_pretrain(cfg: RunConfig) -> dict[str, Any]:
    """Train (unless the backbone has nothing to train), test the best checkpoint, write artifacts."""
    run_dir = cfg.run_dir
    resume = _resume_path(cfg, run_dir)
    if _is_rank_zero():
        write_text(run_dir / "config.yaml", to_yaml(cfg))

    datamodule, module = build_cf_pretrain(cfg)
    data, backbone = datamodule.data, module.backbone

    timing = TimingCallback()
    callbacks: list[L.Callback] = [RankingMetricsCallback(), timing]
    checkpoint = None
    if backbone.trainable:
        checkpoint = ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best", monitor=cfg.stage.monitor, mode="max", save_last=True
        )
        callbacks.append(checkpoint)
        if cfg.stage.patience:
            callbacks.append(EarlyStopping(monitor=cfg.stage.monitor, mode="max", patience=cfg.stage.patience))
    trainer = build_trainer(cfg, run_dir, callbacks, max_epochs=cfg.stage.max_epochs)

    if backbone.trainable and cfg.stage.max_epochs > 0:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        best = checkpoint.best_model_path if checkpoint is not None else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    else:
        trainer.test(module, datamodule=datamodule)

    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    metrics.update(timing.summary())
    metrics["epochs"] = trainer.current_epoch if backbone.trainable else 0
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best_{cfg.stage.monitor}"] = float(checkpoint.best_model_score)
    metrics.update(
        {
            "dataset": cfg.data.name,
            "backbone": cfg.backbone.name,
            "loss": cfg.backbone.loss if backbone.trainable else "none",
            "seed": cfg.seed,
            "num_users": data.num_users,
            "num_items": data.num_items,
            "num_eval_users": int(len(data.eval_users)),
            "num_parameters": sum(p.numel() for p in backbone.parameters()),
        }
    )
    if trainer.is_global_zero:
        write_weights(run_dir / "weights.pt", backbone.state_dict())
        write_metrics_json(run_dir / "metrics.json", metrics)
        log.info("wrote %s", run_dir / "metrics.json")
    return metrics


STAGES = {"cf_pretrain": run_cf_pretrain}


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
    metrics = run(cfg)
    summary = {k: round(v, 4) for k, v in metrics.items() if k in ("test/hit@1", "test/ndcg@10", "test/full/hit@10", "test/full/ndcg@10")}
    log.info("%s %s on %s: %s", cfg.stage.name, cfg.backbone.name, cfg.data.name, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
