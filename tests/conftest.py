"""Shared fixtures: tiny synthetic data, configs redirected into tmp_path, W&B disabled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEAUTY_PREPARED = SHARED_DATA / "amazon" / "Beauty" / "prepared"


def tiny_args(tmp_path: Path, backbone: str = "sasrec", *extra: str) -> list[str]:
    """Command-line arguments of a seconds-long run on synthetic data inside ``tmp_path``."""
    return [
        "data=synthetic",
        f"backbone={backbone}",
        "trainer=cpu",
        "logger=none",
        f"data.root={tmp_path / 'data'}",
        f"paths.runs={tmp_path / 'runs'}",
        "data.synthetic_users=120",
        "data.synthetic_items=40",
        "stage.max_epochs=2",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    from lightning_modules.config import compose

    return compose(tiny_args(tmp_path))


@pytest.fixture
def tiny_datamodule(tmp_path: Path):
    from datamodules.datamodule import SeqDataModule
    from lightning_modules.config import compose

    cfg = compose(tiny_args(tmp_path))
    dm = SeqDataModule(cfg.data, input_kind="sequence", num_negatives=2, seed=0)
    dm.prepare_data()
    dm.setup()
    return dm
