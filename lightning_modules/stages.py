"""Every stage by id: its config dataclass (the ``stage`` group's schema) and its run function.

A new stage is one module beside these (config dataclass with ``upstream_stage`` and ``groups``,
LightningModule, ``build_<id>`` and ``run_<id>``), ``conf/stage/<id>.yaml``, and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_modules.align_stage1 import AlignStage1Config, run_align_stage1
from lightning_modules.align_stage2 import run_align_stage2
from lightning_modules.align_stage2_config import AlignStage2Config
from lightning_modules.cf_pretrain import CFPretrainConfig, run_cf_pretrain
from lightning_modules.face import run_face
from lightning_modules.face_config import FACEConfig


@dataclass(frozen=True)
class Stage:
    config: type
    run: Callable[[Any], dict[str, Any]]


STAGES: dict[str, Stage] = {
    "cf_pretrain": Stage(CFPretrainConfig, run_cf_pretrain),
    "align_stage1": Stage(AlignStage1Config, run_align_stage1),
    "align_stage2": Stage(AlignStage2Config, run_align_stage2),
    "face": Stage(FACEConfig, run_face),
}


def stage_config(name: str) -> type:
    """The config dataclass of stage ``name``."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; expected one of {sorted(STAGES)}")
    return STAGES[name].config
