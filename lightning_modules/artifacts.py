"""Reading the run directory of an earlier stage: where it is, whether it is finished, fresh and made
for this data, and its frozen backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from backbones import BACKBONES, backbone_config, build_backbone
from backbones.base import Backbone
from datamodules.preprocess import ProcessedData
from lightning_modules.rundir import StageArtifactError, check_upstream, make_command

__all__ = ["StageArtifactError", "check_run_dir", "frozen_backbone", "load_backbone", "resolve_upstream", "upstream_hint"]


def upstream_hint(cfg: Any, stage: str) -> str:
    """The ``make`` command that builds this run's default ``stage`` upstream."""
    data = {"name": cfg.data.name, "data_dir": cfg.data.data_dir}
    return make_command({"stage": {"name": stage}, "data": data, "backbone": {"name": cfg.backbone.name}})


def resolve_upstream(cfg: Any) -> Path | None:
    """The earlier run this stage reads (``stage.init_from``, else the default directory of its upstream
    stage), or None for a stage without one. The resolved path is written back into the config, so
    the saved ``config.yaml`` names it."""
    stage = type(cfg.stage).upstream_stage
    if not stage:
        return None
    path = Path(cfg.stage.init_from) if cfg.stage.init_from else cfg.stage_run_dir(stage)
    cfg.stage.init_from = str(path)
    return path


def check_run_dir(run_dir: Path, stage: str, cfg: Any, num_items: int | None = None) -> dict[str, Any]:
    """The saved config of the finished, fresh ``stage`` run in ``run_dir`` made for this run's dataset
    (and ``num_items``, once the data is loaded); otherwise a :class:`StageArtifactError` that says
    which command makes it."""
    hint = upstream_hint(cfg, stage)
    saved = check_upstream(run_dir, stage, hint)
    made_for = saved["data"]["name"]
    count = json.loads((run_dir / "metrics.json").read_text()).get("num_items")
    if made_for != cfg.data.name or (num_items is not None and count != num_items):
        raise StageArtifactError(
            f"{run_dir} was trained on data={made_for} with num_items={count}, but this run uses "
            f"data={cfg.data.name}{f' with {num_items}' if num_items is not None else ''}; run `{hint}` or point "
            f"stage.init_from at a {cfg.data.name} run"
        )
    return saved


def load_backbone(run_dir: Path, data: ProcessedData) -> Backbone:
    """The frozen backbone of a ``cf_pretrain`` run, built from *its* saved config (not the command line's)."""
    saved = OmegaConf.load(run_dir / "config.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(backbone_config(saved.backbone.name)), saved.backbone))
    interactions = data.train_interactions() if BACKBONES[cfg.name].needs_interactions else None
    backbone = build_backbone(cfg, data.num_items, data.num_users, interactions=interactions)
    backbone.load_state_dict(torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True))
    return backbone.requires_grad_(False).eval()


def frozen_backbone(cfg: Any, cf_dir: Path, data: ProcessedData) -> Backbone:
    """The checked ``cf_pretrain`` run's backbone for this run's data, frozen."""
    check_run_dir(cf_dir, "cf_pretrain", cfg, data.num_items)
    return load_backbone(cf_dir, data)
