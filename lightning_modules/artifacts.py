"""Reading the run directory of an earlier stage: its config, weights and compatibility checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from backbones import BACKBONES, backbone_config, build_backbone
from backbones.base import Backbone
from datamodules.preprocess import ProcessedData

MAKE_HINT = {
    "cf_pretrain": "make cf-pretrain DATASET={dataset} BACKBONE={backbone}",
    "align_stage1": "make align-stage1 DATASET={dataset} BACKBONE={backbone}",
}


class StageArtifactError(ValueError):
    """A required earlier run is missing or was made for other data."""


def check_run_dir(run_dir: Path, stage: str, dataset: str, num_items: int, backbone: str) -> dict[str, Any]:
    """The saved config of a finished ``stage`` run for ``dataset``, or a clear error saying which command makes it."""
    hint = MAKE_HINT.get(stage, "").format(dataset=dataset, backbone=backbone)
    done = run_dir / "metrics.json"
    if not done.is_file() or not (run_dir / "weights.pt").is_file():
        # other finished runs of the same stage (e.g. other backbones), to point stage.init_from at
        siblings = sorted(str(p.parent) for p in run_dir.parent.glob("*/metrics.json")) if run_dir.parent.exists() else []
        existing = f"; finished runs there: {siblings}" if siblings else ""
        raise StageArtifactError(
            f"{run_dir} holds no finished {stage} run (no metrics.json/weights.pt); run `{hint}` first "
            f"or point stage.init_from at one{existing}"
        )
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    if saved.get("stage", {}).get("name") != stage:
        raise StageArtifactError(f"{run_dir} is a {saved.get('stage', {}).get('name')!r} run, expected {stage!r}")
    metrics = json.loads(done.read_text())
    if metrics.get("num_items") != num_items or saved["data"]["name"] != dataset:
        raise StageArtifactError(
            f"{run_dir} was trained on data={saved['data']['name']} with num_items={metrics.get('num_items')}, but this run "
            f"uses data={dataset} with {num_items}; run `{hint}` or point stage.init_from at a {dataset} run"
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
