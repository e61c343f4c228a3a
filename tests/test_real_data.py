"""End-to-end checks on the real Beauty data in ../shared/data (slow; skipped when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_modules.config import compose
from lightning_modules.run import run
from tests.conftest import BEAUTY_PREPARED

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BEAUTY_PREPARED.is_dir(), reason=f"real data not found at {BEAUTY_PREPARED}"),
]


def test_beauty_pipeline_and_one_short_epoch(tmp_path: Path) -> None:
    cfg = compose(
        [
            "data=beauty",
            f"data.data_dir={BEAUTY_PREPARED}",
            f"data.root={tmp_path / 'data'}",
            f"paths.runs={tmp_path / 'runs'}",
            "backbone=sasrec",
            "logger=none",
            "trainer=cpu",
            "stage.max_epochs=1",
            "trainer.limit_train_batches=20",
            "trainer.enable_progress_bar=false",
        ]
    )
    metrics = run(cfg)
    assert metrics["num_users"] == 22363 and metrics["num_items"] == 12101 and metrics["num_eval_users"] == 22363
    meta = json.loads((tmp_path / "data" / "processed" / "beauty" / "meta.json").read_text())
    assert meta["stats"]["num_interactions"] == 198502
    assert 0.05 < metrics["test/hit@1"] <= 1.0  # 20 batches already beat random (0.05)
    assert (tmp_path / "runs" / "beauty" / "cf_pretrain" / "sasrec" / "metrics.json").is_file()
