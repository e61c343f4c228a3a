"""What every stage's run shares: its start in the run directory, the Trainer, fit-then-test, and the
artifacts it writes at the end.

A stage's ``run_<stage>(cfg)`` is::

    start = begin_stage(cfg)                 # refuses to mix runs; resume, or already finished
    if start.finished: return start.finished
    datamodule, module = build_<stage>(cfg)
    trainer, metrics = fit_and_test(cfg, module, datamodule, start, ...)  # commits the start, then fits
    return finish(cfg, trainer, metrics, weights, datamodule.data)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import OmegaConf

from callbacks.artifacts import write_metrics_json, write_weights
from callbacks.loggers import build_loggers, log_run_results
from callbacks.ranking import RankingMetricsCallback
from callbacks.resume import RandomStateCallback
from callbacks.timing import TimingCallback
from datamodules.sources import DataFormatError
from lightning_modules.artifacts import check_run_dir, resolve_upstream
from lightning_modules.compute_dtypes import device_of
from lightning_modules.rundir import RunStart, begin_run

log = logging.getLogger("llmrec")


def stage_groups(cfg: Any) -> tuple[str, ...]:
    """Config groups besides seed/data/backbone/stage that the stage's result depends on."""
    return type(cfg.stage).groups


def begin_stage(cfg: Any) -> RunStart:
    """Check the run's upstream (finished, fresh, this dataset) and its own directory; see :func:`begin_run`."""
    upstream = resolve_upstream(cfg)
    if upstream is not None:
        check_run_dir(upstream, type(cfg.stage).upstream_stage, cfg)
    return begin_run(cfg, stage_groups(cfg), upstream)


def device_for(cfg: Any) -> torch.device:
    """Where this process's LLM lives: its GPU under CUDA (LOCAL_RANK under DDP), else the CPU."""
    device = device_of(cfg.trainer.accelerator)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if device.type == "cuda" else device


def require_titles(cfg: Any, data: Any, why: str) -> None:
    """A clear error for a text stage on data without item titles (``rlmrec``)."""
    if not any(data.titles[1:]):
        raise DataFormatError(
            f"data={cfg.data.name} (source {cfg.data.source}) has no item titles; {why}. "
            "Use an Amazon or prepared dataset whose items.csv has titles"
        )


class CheckpointFrom(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose best-model choice ignores epochs before ``first_epoch`` (``last.ckpt`` is kept as usual)."""

    def __init__(self, first_epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_epoch = first_epoch

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if trainer.current_epoch >= self.first_epoch:
            super()._save_topk_checkpoint(trainer, monitor_candidates)


def batch_limit(value: float) -> float | int:
    """A ``trainer.limit_*_batches`` value as Lightning reads it: a share (<= 1.0) or a count (> 1)."""
    return int(value) if value > 1 else value


def build_trainer(
    cfg: Any, run_dir: Path, callbacks: list[L.Callback], max_epochs: int, validate: bool = True
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
        limit_train_batches=batch_limit(t.limit_train_batches),
        limit_val_batches=batch_limit(t.limit_val_batches) if validate else 0,
        limit_test_batches=batch_limit(t.limit_test_batches),
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


def fit_and_test(
    cfg: Any,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    start: RunStart,
    monitor: str,
    patience: int,
    max_epochs: int,
    trainable: bool = True,
    validate: bool = True,
) -> tuple[L.Trainer, dict[str, Any]]:
    """Commit ``start`` (the run's config and upstream record), fit from ``start.resume`` (keeping the
    best epoch by ``monitor`` when validating and ``monitor`` is set, else the last), test it, and return the trainer with the flat metrics: ``test/*``, timing, ``epochs`` (in all),
    ``epochs_trained`` (by this process), ``resumed_from_epoch``, ``global_step`` and ``best_<monitor>``."""
    run_dir = cfg.run_dir
    if patience and validate and not monitor:
        raise ValueError(f"stage.patience={patience} needs a stage.monitor to stop on")
    start.commit()
    resume = start.resume
    timing = TimingCallback()
    callbacks: list[L.Callback] = [RankingMetricsCallback(), timing, RandomStateCallback()]
    checkpoint = None
    fit = trainable and max_epochs > 0
    if fit:
        checkpoint = CheckpointFrom(
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
    metrics["epochs_trained"] = metrics["epochs"]
    metrics["epochs"] = trainer.current_epoch if fit else 0
    metrics["resumed_from_epoch"] = metrics["epochs"] - metrics["epochs_trained"] if resume is not None else 0
    metrics["global_step"] = trainer.global_step
    if monitor and checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best_{monitor}"] = float(checkpoint.best_model_score)
    return trainer, metrics


def finish(cfg: Any, trainer: L.Trainer, metrics: dict[str, Any], weights: dict[str, Any], data: Any) -> dict[str, Any]:
    """Add the run's identity to ``metrics``; rank 0 writes ``weights.pt`` and then ``metrics.json``,
    the marker of a finished run."""
    metrics.update(
        {
            "dataset": cfg.data.name,
            "backbone": cfg.backbone.name,
            "stage": cfg.stage.name,
            "seed": cfg.seed,
            "num_users": data.num_users,
            "num_items": data.num_items,
            "num_eval_users": int(len(data.eval_users)),
            **{f"compute_dtype/{key}": why for key, why in cfg.compute_dtypes.items()},
        }
    )
    if trainer.is_global_zero:
        write_weights(cfg.run_dir / "weights.pt", weights)
        write_metrics_json(cfg.run_dir / "metrics.json", metrics)
        log.info("wrote %s", cfg.run_dir / "metrics.json")
        files = [cfg.run_dir / name for name in ("metrics.json", "config.yaml", "descriptors.csv")]
        name = "-".join((cfg.data.name, cfg.stage.name, cfg.backbone.name) + ((cfg.llm.name,) if "llm" in stage_groups(cfg) else ()))
        log_run_results(trainer.loggers, metrics, files, name)
    return metrics
