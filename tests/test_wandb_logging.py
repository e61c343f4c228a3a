"""What a W&B run logs (offline, no account): group, job type, resolved config, per-epoch curves,
the final metrics (summary and table) and the run's files as an artifact; the report's bar charts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_args


def _spy(monkeypatch, cls, name: str, calls: list) -> None:
    original = getattr(cls, name)

    def spy(self, data, *args, **kwargs):
        calls.append(data)
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)


def test_a_stage_run_logs_config_curves_final_metrics_and_artifacts(tmp_path: Path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb.sdk.wandb_run import Run

    from lightning_modules.run import main

    logged, artifacts = [], []
    _spy(monkeypatch, Run, "log", logged)
    _spy(monkeypatch, Run, "log_artifact", artifacts)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(tiny_args(tmp_path, "sasrec", "logger=wandb", "stage.monitor=val/ndcg@10", "trainer.log_every_n_steps=1")) == 0
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / "sasrec"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = wandb.run
    try:
        assert run.group == "synthetic/sasrec" and run.job_type == "cf_pretrain"
        assert run.config["stage"]["name"] == "cf_pretrain" and run.config["backbone"]["hidden_dim"] == 64
        epochs = [d for d in logged if "val/ndcg@10" in d]
        assert len(epochs) == 2 and all("epoch" in d for d in epochs)  # one point per epoch
        assert any("train/loss" in d for d in logged)
        table = next(d["final_metrics"] for d in logged if "final_metrics" in d)
        assert dict(table.data)["test/hit@1"] == pytest.approx(metrics["test/hit@1"])
        assert run.summary["test/full/ndcg@10"] == pytest.approx(metrics["test/full/ndcg@10"])
        # the sweep metric in the summary is the tested (best) epoch's, not the last one's
        assert run.summary["val/ndcg@10"] == pytest.approx(metrics["best_val/ndcg@10"])
        (artifact,) = [a for a in artifacts if a.type == "results"]  # (tables travel as run_table artifacts)
        assert artifact.name.startswith("synthetic-cf_pretrain-sasrec")
        assert set(artifact.manifest.entries) == {"metrics.json", "config.yaml"}
        assert list((run_dir / "wandb").glob("offline-run-*/files/media/table/final_metrics_*.table.json"))
    finally:
        wandb.finish()


def test_report_logs_a_bar_chart_per_metric(tmp_path: Path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb.sdk.wandb_run import Run

    from benchmarks.report import main as report

    for stage, hit in (("cf_pretrain", 0.3), ("align_stage1", 0.35)):
        path = tmp_path / "beauty" / stage / "sasrec" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"stage": stage, "backbone": "sasrec", "test/hit@1": hit, "test/ndcg@10": hit + 0.2}))
    logged = []
    _spy(monkeypatch, Run, "log", logged)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report([str(tmp_path / "beauty"), "--wandb"]) == 0
    (data,) = logged
    assert data["stages"].data == [["align_stage1/sasrec", 0.35, pytest.approx(0.55)], ["cf_pretrain/sasrec", 0.3, 0.5]]
    assert {type(data[k]).__name__ for k in ("hit@1_by_stage", "ndcg@10_by_stage")} == {"CustomChart"}
    assert wandb.run is None  # the report run is finished
